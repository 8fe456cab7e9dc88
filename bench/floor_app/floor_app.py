"""Flower's floor: each round one message to every node, whose ClientApp replies at once
(optionally after importing torch, as a real ClientApp must), pulled as fedrecon pulls.
Writes ``{"rounds": [seconds, ...], "messages": [{"round", "load_s", "process_s"}, ...]}`` to the run config's ``out``."""

import json
import os
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()


def _age() -> float:
    start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    return float(open("/proc/uptime").read().split()[0]) - start / os.sysconf("SC_CLK_TCK")


LOADED_AT = _age()  # when Flower loaded this app in the message's process


@client.train()
def train(msg: Message, context: Context) -> Message:
    age = _age()
    if context.run_config.get("torch"):
        import torch  # noqa: F401
    return Message(RecordDict({"metrics": MetricRecord({"load_s": LOADED_AT, "process_s": age})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    while not list(grid.get_node_ids()):
        time.sleep(0.5)
    time.sleep(2.0)  # every node connected (the bench's deployment has them up already)
    nodes = list(grid.get_node_ids())
    rounds, ages = [], []
    for r in range(int(cfg["rounds"])):
        start = time.monotonic()
        ids = set(grid.push_messages([Message(RecordDict(), dst_node_id=n, message_type="train") for n in nodes]))
        while ids:
            for reply in grid.pull_messages(ids):
                ids.discard(reply.metadata.reply_to_message_id)
                if not reply.has_error():
                    ages.append({"round": r + 1, **reply.content["metrics"]})
            time.sleep(float(cfg["poll_interval"]))
        rounds.append(time.monotonic() - start)
    with open(str(cfg["out"]), "w") as f:
        json.dump({"rounds": rounds, "messages": ages}, f)
