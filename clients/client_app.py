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
LOCAL_ADAPTER = "local_adapter"  # Context.state key: this client's own factors (merge.adapters: none)


def _numpy(record: ArrayRecord) -> dict:
    return {k: v.numpy() for k, v in record.items()}


def _record(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _backbone(msg: Message, context: Context, config: dict) -> dict | None:
    """The backbone this message brings (kept in the node's context), else the kept one."""
    if P.BACKBONE in msg.content:
        context.state[P.BACKBONE] = msg.content[P.BACKBONE]
        context.state[HELD] = ConfigRecord({"backbone_digest": str(config["backbone_digest"])})
    return _numpy(context.state[P.BACKBONE]) if P.BACKBONE in context.state else None


def _data_root(context: Context, config: dict) -> str:
    # A real deployment keeps its data where it likes; the node config says where.
    return str(context.node_config.get("data-root", config["data_root"]))


def _progress(context: Context) -> ConfigRecord:
    """Tasks and samples this client has learned (its schedule counts tasks)."""
    return context.state.get("progress", ConfigRecord({"tasks": 0, "samples": 0}))


@app.train()
def train(msg: Message, context: Context) -> Message:
    from clients.learner import learn_task

    start = time.perf_counter()
    task = dict(msg.content[P.TASK_CONFIG])
    faults.before_task(task)
    arrays = _numpy(msg.content[P.TASK_ARRAYS])
    backbone = _backbone(msg, context, task)
    progress = _progress(context)
    extra = {}
    if task.get("adapter_schedule", "frozen") == "frozen":
        stats = learn_task(task, arrays["sample_index"], arrays["sample_labels"], backbone, _data_root(context, task))
    else:
        stats, extra = _learn_adapted(msg, context, task, arrays, backbone, int(progress["tasks"]))

    progress["tasks"] = int(progress["tasks"]) + 1
    progress["samples"] = int(progress["samples"]) + len(arrays["sample_index"])
    context.state["progress"] = progress

    reply = RecordDict({
        P.STATS: _record(faults.spoil(task, stats.to_arrays())),
        **extra,
        P.METRICS: MetricRecord({
            "task": int(task["task"]),
            "samples": len(arrays["sample_index"]),
            "seconds": time.perf_counter() - start,
        }),
    })
    return Message(reply, reply_to=msg)


def _learn_adapted(msg: Message, context: Context, task: dict, arrays: dict, backbone: dict | None,
                   task_number: int) -> tuple:
    """Train the adapter on the task; the reply's adapter update (and drift sums) as records.
    Under ``merge.adapters: none`` the client's own factors stay in its context."""
    from clients.learner import learn_task_adapted

    global_state = _numpy(msg.content[P.ADAPTER]) if P.ADAPTER in msg.content else {}
    local_state = _numpy(context.state[LOCAL_ADAPTER]) if LOCAL_ADAPTER in context.state else {}
    result = learn_task_adapted(task, arrays["sample_index"], arrays["sample_labels"], backbone, _data_root(context, task),
                                int(context.node_config["partition-id"]), global_state, local_state, task_number,
                                arrays.get("prototypes"))
    if result.local:
        context.state[LOCAL_ADAPTER] = _record(result.local)
    extra = {P.ADAPTER_UPDATE: _record(result.factors)}
    if result.drift is not None:
        extra[P.DRIFT] = _record({"sums": result.drift[0], "weights": result.drift[1]})
    return result.stats, extra


@app.train(P.ADAPT)
def adapt(msg: Message, context: Context) -> Message:
    """One of a round's adapter rounds: train the merged adapter on the task, send the factors."""
    from clients.learner import adapt_task

    start = time.perf_counter()
    task = dict(msg.content[P.TASK_CONFIG])
    arrays = _numpy(msg.content[P.TASK_ARRAYS])
    factors, loss = adapt_task(task, arrays["sample_index"], arrays["sample_labels"], _backbone(msg, context, task),
                               _data_root(context, task), int(context.node_config["partition-id"]),
                               _numpy(msg.content[P.ADAPTER]), int(_progress(context)["tasks"]))
    reply = RecordDict({
        P.ADAPTER_UPDATE: _record(factors),
        P.METRICS: MetricRecord({"task": int(task["task"]), "samples": len(arrays["sample_index"]),
                                 "seconds": time.perf_counter() - start, "loss": loss}),
    })
    return Message(reply, reply_to=msg)


@app.train(P.FINETUNE)
def finetune(msg: Message, context: Context) -> Message:
    """A task of the fedavg_finetune baseline: fine-tune the global model, send it back."""
    from clients.learner import learn_task_finetune

    task = dict(msg.content[P.TASK_CONFIG])
    faults.before_task(task)
    arrays = _numpy(msg.content[P.TASK_ARRAYS])
    model, info = learn_task_finetune(task, arrays["sample_index"], arrays["sample_labels"], _numpy(msg.content[P.MODEL]),
                                      _data_root(context, task))
    reply = RecordDict({
        P.MODEL_UPDATE: _record(faults.spoil(task, model)),
        P.METRICS: MetricRecord({"task": int(task["task"]), "samples": len(arrays["sample_index"]),
                                 "seconds": info["seconds"], "loss": info["loss"]}),
    })
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    from clients.evaluator import score_share

    config = dict(msg.content[P.EVAL_CONFIG])
    arrays = _numpy(msg.content[P.EVAL_ARRAYS])
    adapter = None
    if config.get("adapter_schedule", "frozen") != "frozen":
        # the server's merged adapter; under merge.adapters none, this client's own
        own = context.state[LOCAL_ADAPTER] if LOCAL_ADAPTER in context.state else ArrayRecord({})
        adapter = _numpy(msg.content[P.ADAPTER] if P.ADAPTER in msg.content else own)
    correct, samples = score_share(config, _numpy(msg.content[P.MODEL]), arrays["sample_index"], arrays["sample_labels"],
                                   _backbone(msg, context, config), _data_root(context, config), adapter)
    return Message(RecordDict({P.METRICS: MetricRecord({"correct": correct, "samples": samples})}), reply_to=msg)


@app.query(P.IDENTIFY)
def identify(msg: Message, context: Context) -> Message:
    held = str(context.state[HELD]["backbone_digest"]) if HELD in context.state else ""
    identity = ConfigRecord({"partition_id": int(context.node_config["partition-id"]), "backbone_digest": held})
    return Message(RecordDict({P.IDENTITY: identity}), reply_to=msg)
