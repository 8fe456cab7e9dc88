"""Flower ClientApp: decode a task, learn it, reply with the new class statistics."""

from __future__ import annotations

import time

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.learner import learn_task
from fedrecon import protocol as P

app = ClientApp()


def _numpy(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


@app.train()
def train(msg: Message, context: Context) -> Message:
    start = time.perf_counter()
    task = dict(msg.content[P.TASK_CONFIG])
    arrays = _numpy(msg.content[P.TASK_ARRAYS])
    if P.BACKBONE in msg.content:
        context.state[P.BACKBONE] = msg.content[P.BACKBONE]
    backbone = _numpy(context.state[P.BACKBONE]) if P.BACKBONE in context.state else None
    # A real deployment keeps its data where it likes; the node config says where.
    data_root = str(context.node_config.get("data-root", task["data_root"]))
    stats = learn_task(task, arrays["sample_index"], arrays["sample_labels"], backbone, data_root)

    progress = context.state.get("progress", ConfigRecord({"tasks": 0, "samples": 0}))
    progress["tasks"] = int(progress["tasks"]) + 1
    progress["samples"] = int(progress["samples"]) + len(arrays["sample_index"])
    context.state["progress"] = progress

    reply = RecordDict({
        P.STATS: ArrayRecord({k: Array(v) for k, v in stats.to_arrays().items()}),
        P.METRICS: MetricRecord({
            "task": int(task["task"]),
            "samples": len(arrays["sample_index"]),
            "seconds": time.perf_counter() - start,
        }),
    })
    return Message(reply, reply_to=msg)


@app.query(P.IDENTIFY)
def identify(msg: Message, context: Context) -> Message:
    identity = ConfigRecord({"partition_id": int(context.node_config["partition-id"])})
    return Message(RecordDict({P.IDENTITY: identity}), reply_to=msg)
