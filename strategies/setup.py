"""The run's setup, attached to a message for a node that does not hold it."""

from __future__ import annotations

from flwr.app import ConfigRecord, RecordDict

from fedrecon import protocol as P
from strategies.nodes import Nodes
from strategies.wire import to_record


class NodeSetup:
    """The setup (:func:`fedrecon.protocol.setup_record`) and the backbone's weights,
    converted to records once for the whole run.

    Parameters
    ----------
    setup : dict
        The run's setup, sent once per node.
    backbone : dict of ndarray
        Backbone weights sent with the setup (empty: installed on every client).
    """

    def __init__(self, setup: dict[str, str], backbone: dict):
        self.record = ConfigRecord({**setup, "weights": "sent" if backbone else "installed"})
        self.backbone = to_record(backbone)

    def attach(self, content: RecordDict, nodes: Nodes, client: int) -> None:
        """Add the setup for a client whose node does not hold it, with the backbone's
        weights unless the node said it holds them (sending it is counted by
        :meth:`strategies.state.ServerState.sent`)."""
        if not nodes.needs_setup(client):
            return
        content[P.SETUP] = self.record
        if nodes.needs_weights(client):
            content[P.BACKBONE] = self.backbone
        content[P.FOR_CLIENT] = ConfigRecord({"partition_id": client})
