"""Which node is which client, and which nodes hold this run's setup."""

from __future__ import annotations

import time
from logging import WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log

from fedrecon import protocol as P


def identify_queries(node_ids, scenario_json: str | None = None) -> list[Message]:
    """A ``query.identify`` message to each node: it answers with its partition id and the
    setup it holds. With ``scenario_json`` the node may start preparing the scenario's data."""
    content = {P.PREPARE: ConfigRecord({"scenario": scenario_json})} if scenario_json else {}
    return [Message(RecordDict(content), dst_node_id=n, message_type=f"{MessageType.QUERY}.{P.IDENTIFY}")
            for n in node_ids]


class Nodes:
    """Partition ids to node ids, learned through ``query.identify`` messages.

    A node answers with its partition id, the digest of the setup it holds and the
    digests of the backbone weights its process or machine holds; one that holds this
    run's setup needs no copy, and one that holds the weights is sent the setup without
    them. Building the queries and reading the answers are separate steps, as for any message.

    Parameters
    ----------
    clients : int
        Partition ids are ``0..clients-1``.
    setup_digest : str
        Digest of this run's setup (:func:`fedrecon.protocol.setup_record`).
    backbone_digest : str
        Digest of the backbone's weights ('': a node's answer about them is not trusted,
        and every setup brings them).
    scenario_json : str or None
        The run's scenario, named in each query so that a node may prepare its data
        before its first task (None: not named).
    """

    def __init__(self, clients: int, setup_digest: str, backbone_digest: str = "", scenario_json: str | None = None):
        self.clients = clients
        self.scenario_json = scenario_json
        self.setup_digest = setup_digest
        self.backbone_digest = backbone_digest
        self.ids: dict[int, int] = {}  # partition id -> node id
        self.ready: set[int] = set()  # partition ids whose node holds the setup
        self.weighted: set[int] = set()  # partition ids whose node said it holds the backbone's weights
        self.sent_setup: set[int] = set()  # partition ids sent the setup at least once
        self.assumed: set[int] = set()  # partition ids mapped from an earlier run's memory, not yet confirmed

    def __contains__(self, client: int) -> bool:
        return client in self.ids

    def node(self, client: int) -> int:
        return self.ids[client]

    def wait_for_all(self, grid, timeout: float, seen=lambda connected: None) -> None:
        """Block until every client's node is connected (the first round only); ``seen``
        is told how many are, every half second."""
        deadline = time.monotonic() + timeout
        while (connected := len(list(grid.get_node_ids()))) < self.clients:
            seen(connected)
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {connected} of {self.clients} clients connected in {timeout:.0f} s")
            time.sleep(0.5)

    def configure_identify(self, online: list[int]) -> list[Message]:
        """Queries for the nodes not known yet (a SuperNode that restarted has a new id);
        a known node that went offline is dropped (its client's tasks wait)."""
        online_set = set(online)
        for pid, node in list(self.ids.items()):
            if node not in online_set:
                log(WARNING, "client %d (node %d) is gone; its tasks wait until it is back", pid, node)
                del self.ids[pid]
                self.ready.discard(pid)
        return identify_queries(sorted(online_set - set(self.ids.values())), self.scenario_json)

    def assume(self, remembered: dict[int, int]) -> None:
        """Partition ids to node ids as an earlier run on these nodes learned them (no
        query): the first message to each brings the setup and names its client, and a
        node that is another client refuses it (see :meth:`failed`)."""
        for pid, node in remembered.items():
            if 0 <= pid < self.clients and pid not in self.ids and node not in self.ids.values():
                self.ids[pid] = node
                self.assumed.add(pid)

    def confirmed(self) -> dict[int, int]:
        """Partition ids to node ids that a node's answer or reply confirmed."""
        return {pid: node for pid, node in self.ids.items() if pid not in self.assumed}

    def failed(self, client: int) -> None:
        """A task of ``client`` failed: its node may have lost the setup, and a node only
        assumed to be this client's is forgotten (the next identify asks it)."""
        self.ready.discard(client)
        self.weighted.discard(client)  # it may have said no setup because it lost them
        if client in self.assumed:
            self.assumed.discard(client)
            self.ids.pop(client, None)

    def aggregate_identify(self, replies: list[Message], warn: bool = True) -> None:
        for reply in replies:
            if reply.has_error():
                continue
            identity = reply.content[P.IDENTITY]
            pid = int(identity["partition_id"])
            for other in [p for p, n in self.ids.items() if n == reply.metadata.src_node_id and p != pid]:
                del self.ids[other]  # an assumption the node's own answer contradicts
                self.assumed.discard(other)
            self.ids[pid] = reply.metadata.src_node_id
            self.assumed.discard(pid)
            # a node keeps the setup in its context; a new node or a new run has none
            if identity.get("setup_digest", "") == self.setup_digest:
                self.ready.add(pid)
            else:
                self.ready.discard(pid)
            if self.backbone_digest and self.backbone_digest in str(identity.get("weights", "")).split(","):
                self.weighted.add(pid)
            else:
                self.weighted.discard(pid)
        missing = self.missing()
        if missing and warn:
            log(WARNING, "clients %s are not connected", missing)

    def missing(self) -> list[int]:
        return sorted(set(range(self.clients)) - set(self.ids))

    def delivered(self, client: int) -> None:
        """A reply came from the client's node: it holds the setup now (and is that client)."""
        self.ready.add(client)
        self.assumed.discard(client)

    def needs_setup(self, client: int) -> bool:
        return client not in self.ready

    def needs_weights(self, client: int) -> bool:
        return client not in self.weighted

    def setup_sent(self, client: int) -> bool:
        """Record that the setup goes to ``client``; True when it had been sent before (a re-send)."""
        again = client in self.sent_setup
        self.sent_setup.add(client)
        return again

    def state(self) -> dict:
        # node ids and who holds the setup are not kept: a resumed run has new nodes, and the identify answers say
        return {"sent_setup": sorted(self.sent_setup)}

    def restore(self, state: dict) -> None:
        self.sent_setup = set(state.get("sent_setup", []))
