"""``messages.jsonl`` in the run folder: where a message's time goes.

A line a reply (its round and phase, its client, the server's wait for the exchange, and
the client's own timings: the process's age when Flower loaded the app and when the
handler began, imports, data, backbone, embedding, whether it ran on CUDA), and a line for
the server's own work between exchanges (``server_s``).
"""

from __future__ import annotations

import json
from pathlib import Path


class MessageLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def replies(self, server_round: int, phase: str, replies: list, seconds: float, clients: dict[int, int]) -> None:
        """``clients``: node id to client (partition) id."""
        lines = []
        for reply in replies:
            line = {"round": server_round, "phase": phase, "client": clients.get(reply.metadata.src_node_id),
                    "exchange_s": round(seconds, 3), "error": reply.has_error()}
            if not reply.has_error() and "metrics" in reply.content:
                line.update({k: v for k, v in reply.content["metrics"].items()
                             if k.endswith("_s") or k in ("seconds", "cuda")})
            lines.append(json.dumps(line))
        self._write(lines)

    def server(self, server_round: int, phase: str, seconds: float) -> None:
        self._write([json.dumps({"round": server_round, "phase": phase, "server_s": round(seconds, 3)})])

    def _write(self, lines: list[str]) -> None:
        if lines:
            with self.path.open("a") as f:
                f.write("\n".join(lines) + "\n")
