"""Flower ClientApp: decode a task, learn it, reply with the new class statistics."""

from __future__ import annotations

import time

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import faults
from fedrecon import protocol as P

# clients.learner and clients.evaluator import torch (seconds): they are imported in
# the handlers that need them, so that an identify query, which in deployment starts a
# fresh ClientApp process, answers fast.

app = ClientApp()
HELD = "held"  # Context.state key: digest of the backbone this node keeps


def _numpy(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


def _backbone(msg: Message, context: Context, config: dict) -> dict | None:
    """The backbone this message brings (kept in the node's context), else the kept one."""
    if P.BACKBONE in msg.content:
        context.state[P.BACKBONE] = msg.content[P.BACKBONE]
        context.state[HELD] = ConfigRecord({"backbone_digest": str(config["backbone_digest"])})
    return _numpy(context.state[P.BACKBONE]) if P.BACKBONE in context.state else None


def _data_root(context: Context, config: dict) -> str:
    # A real deployment keeps its data where it likes; the node config says where.
    return str(context.node_config.get("data-root", config["data_root"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    from clients.learner import learn_task

    start = time.perf_counter()
    task = dict(msg.content[P.TASK_CONFIG])
    faults.before_task(task)
    arrays = _numpy(msg.content[P.TASK_ARRAYS])
    backbone = _backbone(msg, context, task)
    stats = learn_task(task, arrays["sample_index"], arrays["sample_labels"], backbone, _data_root(context, task))

    progress = context.state.get("progress", ConfigRecord({"tasks": 0, "samples": 0}))
    progress["tasks"] = int(progress["tasks"]) + 1
    progress["samples"] = int(progress["samples"]) + len(arrays["sample_index"])
    context.state["progress"] = progress

    reply = RecordDict({
        P.STATS: ArrayRecord({k: Array(v) for k, v in faults.spoil(task, stats.to_arrays()).items()}),
        P.METRICS: MetricRecord({
            "task": int(task["task"]),
            "samples": len(arrays["sample_index"]),
            "seconds": time.perf_counter() - start,
        }),
    })
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from clients.evaluator import score_share

    config = dict(msg.content[P.EVAL_CONFIG])
    arrays = _numpy(msg.content[P.EVAL_ARRAYS])
    correct, samples = score_share(config, _numpy(msg.content[P.MODEL]), arrays["sample_index"], arrays["sample_labels"],
                                   _backbone(msg, context, config), _data_root(context, config))
    return Message(RecordDict({P.METRICS: MetricRecord({"correct": correct, "samples": samples})}), reply_to=msg)


@app.query(P.IDENTIFY)
def identify(msg: Message, context: Context) -> Message:
    held = str(context.state[HELD]["backbone_digest"]) if HELD in context.state else ""
    identity = ConfigRecord({"partition_id": int(context.node_config["partition-id"]), "backbone_digest": held})
    return Message(RecordDict({P.IDENTITY: identity}), reply_to=msg)
