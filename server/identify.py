"""Identify queries pushed when the ServerApp starts, before the scenario is prepared."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from server.node_memory import NodeMemory
from server.polling import PollingGrid
from strategies.nodes import identify_queries


@dataclass
class EarlyIdentify:
    """Identify queries pushed to the nodes online when the ServerApp starts, answered while
    the server prepares the scenario: in deployment each answer costs a new process on its
    node, and the first round no longer waits for them (nodes that connect later are asked
    then). Nodes the memory knows from an earlier run are not asked: ``assumed`` maps their
    partition ids to them."""

    grid: PollingGrid
    waiting: set[str]
    assumed: dict[int, int] = field(default_factory=dict)
    memory: NodeMemory | None = None
    began: float = field(default_factory=time.perf_counter)

    @classmethod
    def ask(cls, grid: PollingGrid, memory: NodeMemory | None = None, scenario_json: str | None = None) -> "EarlyIdentify":
        """Ask the unknown nodes; with ``scenario_json`` each may prepare the scenario's data
        (a new node decodes it into its cache while the server prepares)."""
        online = sorted(grid.get_node_ids())
        remembered = memory.recall() if memory is not None else {}
        unknown = [n for n in online if n not in remembered]
        assumed = {remembered[n]: n for n in online if n in remembered}
        return cls(grid, grid.push(identify_queries(unknown, scenario_json)), assumed, memory)

    def answers(self, timeout: float) -> list:
        return self.grid.collect(self.waiting, timeout=timeout)
