"""Which node was which client, remembered between runs on the same SuperLink.

In deployment every message costs a new process on its node, so asking every node which
client it is costs the first round a whole exchange. SuperNodes outlive runs and keep their
node ids (with node authentication the id belongs to the registered key), so the ServerApp
keeps the answers in a small file under its ``FLWR_HOME`` and, in the next run, sends the
first tasks straight to the remembered nodes. Nothing rests on the memory being right: each
first message names its client, a node that is another client refuses it, and the server
then asks that node and retries the task (``strategies.nodes.Nodes.failed``).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

FILE = "fedrecon-nodes.json"


@dataclass(frozen=True)
class NodeMemory:
    path: Path

    @classmethod
    def default(cls) -> "NodeMemory":
        """In the ServerApp's ``FLWR_HOME`` (Flower's default ``~/.flwr``)."""
        return cls(Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr") / FILE)

    def recall(self) -> dict[int, int]:
        """Node id to partition id; empty when there is no memory or it cannot be read."""
        try:
            raw = json.loads(self.path.read_text())
            return {int(node): int(pid) for node, pid in raw["nodes"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def remember(self, confirmed: dict[int, int]) -> None:
        """Keep ``confirmed`` (partition id to node id) over what was remembered of those
        nodes and partitions; written whole or not at all."""
        if not confirmed:
            return
        nodes, pids = set(confirmed.values()), set(confirmed)
        merged = {n: p for n, p in self.recall().items() if n not in nodes and p not in pids}
        merged.update({node: pid for pid, node in confirmed.items()})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps({"nodes": {str(n): p for n, p in sorted(merged.items())}}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a memory is an optimisation: a run never fails for want of one
