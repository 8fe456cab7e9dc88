"""Flower's own floor in its simulation engine: N virtual nodes, each round one message to
each of ``--per-round`` of them, answered at once by a ClientApp that does nothing else
(optionally carrying ``--state-kb`` of its own in ``Context.state``, as a node that kept a
backbone there would). What fedrecon's simulation costs per message on top of this is ours.

Run: .venv/bin/python bench/sim_floor.py --nodes 1000 --rounds 9 --per-round 330
Prints one JSON line: the seconds of each round and the median per message of the later ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=330)
    parser.add_argument("--state-kb", type=int, default=0)
    args = parser.parse_args()
    from server.cli import QUIET_FLOWER  # the environment `fedrecon run` gives Flower, for a like-for-like floor

    for key, value in QUIET_FLOWER.items():
        os.environ.setdefault(key, value)
    import logging

    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    client, server = ClientApp(), ServerApp()
    rounds: list[float] = []

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        if args.state_kb and "kept" not in context.state:
            context.state["kept"] = ArrayRecord({"w": Array(np.zeros(args.state_kb * 128))})
        return Message(RecordDict({"metrics": MetricRecord({"ok": 1})}), reply_to=msg)

    @server.main()
    def serve(grid: Grid, context: Context) -> None:
        while len(nodes := sorted(grid.get_node_ids())) < args.nodes:
            time.sleep(0.1)
        rng = random.Random(0)
        for _ in range(args.rounds):
            start = time.perf_counter()
            chosen = rng.sample(nodes, min(args.per_round, len(nodes)))
            replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type="train")
                                             for n in chosen])
            if sum(not r.has_error() for r in replies) != len(chosen):
                raise SystemExit("the floor lost replies")
            rounds.append(time.perf_counter() - start)

    run_simulation(server_app=server, client_app=client, num_supernodes=args.nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "ERROR", "log_to_driver": False}})
    later = sorted(rounds[1:])
    median = later[len(later) // 2] if later else rounds[0]
    print(json.dumps({"nodes": args.nodes, "per_round": args.per_round, "state_kb": args.state_kb,
                      "rounds_s": [round(r, 3) for r in rounds], "median_round_s": round(median, 3),
                      "ms_per_message": round(1000 * median / args.per_round, 2)}))


if __name__ == "__main__":
    main()
