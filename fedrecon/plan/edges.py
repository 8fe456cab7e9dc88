"""Edge sites: the clients in contiguous groups, each group summed at its edge.

Client ``c`` of ``n`` belongs to edge ``c * edges // n``, so every edge holds ``n // edges``
or one more clients, and a client's edge never depends on who else is present. Under the
``exact`` merge a sum of edge sums is the sum of the clients' statistics, so a federation of
edges ends where the flat one ends, and so do separate edge runs added by ``fedrecon merge``.
"""

from __future__ import annotations

from dataclasses import replace

from fedrecon.plan.records import Plan


def tiers(clients) -> int:
    """Edges whose sums this run adds at a top tier (a ``clients`` section): ``edges``, or 1
    when there is no top tier here (one tier, or one edge's own run: it is the edge)."""
    return clients.edges if clients.edge is None else 1


def edge_of(client: int, clients: int, edges: int) -> int:
    """The edge client ``client`` of ``clients`` belongs to."""
    return client * edges // clients


def edge_clients(edge: int, clients: int, edges: int) -> range:
    """The clients of edge ``edge``: a contiguous range."""
    first = -(-edge * clients // edges)  # the smallest c with c * edges // clients == edge
    last = -(-(edge + 1) * clients // edges)
    return range(first, last)


def only_edge(plan: Plan, edge: int, edges: int) -> Plan:
    """The plan of one edge's own federation: its clients' arrivals and presence only.
    Client ids, rounds and test samples stay those of the whole plan, so edge runs of one
    scenario add up to the whole plan's statistics."""
    mine = set(edge_clients(edge, plan.clients, edges))
    return replace(plan, arrivals=tuple(a for a in plan.arrivals if a.client in mine),
                   present=tuple(frozenset(p & mine) for p in plan.present))
