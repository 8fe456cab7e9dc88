"""The edge tier inside one run: each edge adds its clients' replies, the top tier the edges' sums."""

from __future__ import annotations

from flwr.app import RecordDict

from fedrecon import protocol as P
from fedrecon.learning.stats import ClassStats, add_stats
from fedrecon.plan.edges import edge_of
from strategies.wire import record_bytes, to_record


def edge_sums(parts: list[tuple[int, ClassStats]], clients: int, edges: int, dim: int) -> list[ClassStats]:
    """One sum of statistics a round per edge that heard from a client, in edge order.
    ``parts`` are (client, its accepted statistics)."""
    groups: dict[int, list[ClassStats]] = {}
    for client, stats in parts:
        groups.setdefault(edge_of(client, clients, edges), []).append(stats)
    return [add_stats(group, dim=dim) for _, group in sorted(groups.items())]


def sums_bytes(sums: list[ClassStats]) -> int:
    """What the edges' sums weigh on the wire to the top tier, each as a reply's record."""
    return sum(record_bytes(RecordDict({P.STATS: to_record(s.to_arrays())})) for s in sums)
