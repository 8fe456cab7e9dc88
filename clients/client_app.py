"""Flower ClientApp: decode a message, call what a client does with it, encode the reply."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER

from clients import faults, node, worker
from clients.records import arrays_of, record_of
from fedrecon import protocol as P
from fedrecon.learning.stats import ClassStats  # numpy only


def process_age() -> float:
    """Seconds since this process started (a SuperNode starts one per message), -1 where unknown."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return -1.0


LOADED_AT = process_age()  # when Flower loaded this app in the message's process

# In simulation this module is loaded in Ray's actors, which Flower ends with a warning of its
# own ("Manually terminating ClientAppActor", flwr/simulation/ray_transport/ray_actor.py) that
# Ray forwards to the console, coloured, after the run's final table. It is every actor's
# normal end: dropped in the actor's process, where the CLI's filter (server/cli.py's
# KNOWN_HARMLESS) cannot reach. Every other line of Flower's still shows.
ACTOR_END = "Manually terminating "


def not_actor_end(record: logging.LogRecord) -> bool:
    """A logging filter: False for the actors' termination warning."""
    return not record.getMessage().startswith(ACTOR_END)


if not_actor_end not in FLOWER_LOGGER.filters:
    FLOWER_LOGGER.addFilter(not_actor_end)

# clients.learner and clients.evaluator import torch (seconds): they are imported in
# the handlers that need them, so that an identify query, which in deployment starts a
# fresh ClientApp process, answers fast.

app = ClientApp()


def _task(msg: Message) -> tuple[dict, dict]:
    """The task message's config (round, task, fault keys) and arrays (sample indices and labels)."""
    return dict(msg.content[P.TASK_CONFIG]), arrays_of(msg.content[P.TASK_ARRAYS])


def _metrics(task: dict, arrays: dict, start: float, **extra) -> MetricRecord:
    return MetricRecord({"task": int(task["task"]), "samples": len(arrays["sample_index"]),
                         "seconds": time.perf_counter() - start, **extra})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A task: learn its classes and send their statistics (and, under adapters, the factors).
    The reply's metrics say where the message's time went (process, imports, data, backbone, embedding)."""
    timings = {"load_s": LOADED_AT, "process_s": process_age()}
    start = time.perf_counter()
    setup = node.setup(msg, context)
    if setup.scenario.sites is not None:  # a site learns what its own folder holds
        from clients.site_app import site_train

        return site_train(msg, context, setup, timings)
    task, arrays = _task(msg)
    faults.before_task(task)
    factors, extra = {}, {}
    if not setup.scenario.adapters.active:
        stats = _learn(setup, context, task, arrays, timings)
    else:
        result = _learn_adapted(msg, context, setup, task, arrays)
        stats, factors = result.stats, result.factors
        extra = {P.ADAPTER_UPDATE: record_of(factors)}
        if result.drift is not None:
            extra[P.DRIFT] = record_of({"sums": result.drift[0], "weights": result.drift[1]})
    metrics = _metrics(task, arrays, start, **timings)
    if P.SECAGG in msg.content:  # the statistics leave this client only masked, in the round's layout
        from clients import secure

        if isinstance(stats, dict):  # the worker's arrays (a Gram of few samples formed from its factor)
            stats = ClassStats.from_arrays(stats)
        vector = secure.masked(msg, context, stats, factors, float(len(arrays["sample_index"])), _noise(setup, task, stats))
        return Message(RecordDict({P.MASKED: record_of(faults.spoil(task, {"masked": vector})), P.METRICS: metrics}),
                       reply_to=msg)
    sent = stats if isinstance(stats, dict) else stats.to_arrays()  # the worker's arrays go out as they came
    reply = RecordDict({P.STATS: record_of(faults.spoil(task, sent)), **extra, P.METRICS: metrics})
    return Message(reply, reply_to=msg)


def _noise(setup, task: dict, stats: ClassStats) -> tuple[float, dict] | None:
    """Under privacy.dp, the std and the blocks' scales the task's statistics were noised with."""
    if "dp_std" not in task:
        return None
    from fedrecon import dp
    from fedrecon.learning.heads import head_spec

    s = setup.scenario
    return float(task["dp_std"]), dp.block_scales(head_spec(s.merge, s.seed), s.privacy.dp.clip, stats.dim)


def _learn(setup, context: Context, task: dict, arrays: dict, timings: dict) -> ClassStats | dict[str, np.ndarray]:
    """A frozen-backbone task's statistics: from the node's worker in a SuperNode's
    per-message process (clients/worker.py), as they travel (``ClassStats.to_arrays``),
    else learned here. ``timings["cuda"]``: 1 when the task ran on a GPU."""
    noise = float(task["dp_std"]) if "dp_std" in task else None
    if worker.wanted(context.node_config):
        return worker.learn(node.setup_record(context), context.node_config, arrays["sample_index"],
                            arrays["sample_labels"], noise, timings)
    clock = time.perf_counter()
    from clients.learner import learn_task
    from fedrecon.backbones.embed import pick_device

    timings["import_s"] = round(time.perf_counter() - clock, 4)
    timings["cuda"] = float(pick_device(setup.scenario.model.device).type == "cuda")
    return learn_task(setup, arrays["sample_index"], arrays["sample_labels"], noise, timings)


def _learn_adapted(msg: Message, context: Context, setup, task: dict, arrays: dict):
    """Train the adapter on the task (the result's factors and drift sums go in the reply).
    Under ``merge.adapters: none`` the client's own factors stay in its context."""
    from clients.learner import learn_task_adapted

    global_state = arrays_of(msg.content[P.ADAPTER]) if P.ADAPTER in msg.content else {}
    local_state = arrays_of(context.state[node.LOCAL_ADAPTER]) if node.LOCAL_ADAPTER in context.state else {}
    result = learn_task_adapted(setup, arrays["sample_index"], arrays["sample_labels"], int(task["round"]),
                                global_state, local_state, int(task["learned"]), arrays.get("prototypes"))
    if result.local:
        context.state[node.LOCAL_ADAPTER] = record_of(result.local)
    return result


@app.train(P.ADAPT)
def adapt(msg: Message, context: Context) -> Message:
    """One of a round's adapter steps: train the merged adapter on the task, send the factors."""
    from clients.learner import adapt_task

    start = time.perf_counter()
    setup = node.setup(msg, context)
    task, arrays = _task(msg)
    known = ClassStats(arrays["known_ids"], arrays["known_counts"], arrays["known_sums"]) if "known_ids" in arrays else None
    step = adapt_task(setup, arrays["sample_index"], arrays["sample_labels"], int(task["round"]), int(task["step"]),
                      arrays_of(msg.content[P.ADAPTER]), int(task["learned"]), known)
    reply = RecordDict({P.ADAPTER_UPDATE: record_of(step.factors), P.METRICS: _metrics(task, arrays, start, loss=step.loss)})
    if setup.scenario.adapters.classifier == "federation" and step.classes is not None:  # for the next step
        reply[P.STEP_CLASSES] = record_of(step.classes.to_arrays())
    return Message(reply, reply_to=msg)


@app.train(P.FINETUNE)
def finetune(msg: Message, context: Context) -> Message:
    """A task of the fedavg_finetune baseline: fine-tune the global model, send it back."""
    from clients.learner import learn_task_finetune

    start = time.perf_counter()
    setup = node.setup(msg, context)
    task, arrays = _task(msg)
    faults.before_task(task)
    model, info = learn_task_finetune(setup, arrays["sample_index"], arrays["sample_labels"], arrays_of(msg.content[P.MODEL]),
                                      int(task["round"]))
    reply = RecordDict({P.MODEL_UPDATE: record_of(faults.spoil(task, model)),
                        P.METRICS: _metrics(task, arrays, start, loss=info["loss"])})
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the merged statistics' head on this client's share of the test samples."""
    from clients.evaluator import score_share

    setup = node.setup(msg, context)
    config, arrays = dict(msg.content[P.EVAL_CONFIG]), arrays_of(msg.content[P.EVAL_ARRAYS])
    adapter = None
    if setup.scenario.adapters.active:
        # the server's merged adapter; under merge.adapters none, this client's own
        own = context.state[node.LOCAL_ADAPTER] if node.LOCAL_ADAPTER in context.state else ArrayRecord({})
        adapter = arrays_of(msg.content[P.ADAPTER] if P.ADAPTER in msg.content else own)
    correct, samples = score_share(setup, arrays_of(msg.content[P.MERGED_STATS]),
                                   arrays["sample_index"], arrays["sample_labels"], int(config["round"]), adapter)
    return Message(RecordDict({P.METRICS: MetricRecord({"correct": correct, "samples": samples})}), reply_to=msg)


@app.query(P.UNKNOWN_SCORES)
def unknown_scores(msg: Message, context: Context) -> Message:
    """Count this client's training samples' unknown-input scores in the fixed bins."""
    from clients.unknown_scores import count_scores

    setup = node.setup(msg, context)
    held = {}
    if setup.scenario.sites is not None:  # a site takes the model update, then scores its merged samples
        from clients.site_app import site_scores

        counts, version = site_scores(msg, context, setup)
        held = {P.METRICS: MetricRecord({"version": version})}
        if counts is None:  # its model is another version: it counts nothing this round
            return Message(RecordDict(held), reply_to=msg)
    else:
        config, arrays = dict(msg.content[P.UNKNOWN_CONFIG]), arrays_of(msg.content[P.EVAL_ARRAYS])
        adapter = arrays_of(msg.content[P.ADAPTER]) if P.ADAPTER in msg.content else None
        counts = count_scores(setup, str(config["kind"]), arrays_of(msg.content[P.UNKNOWN_ARRAYS]),
                              arrays_of(msg.content[P.UNKNOWN_CLASSES]), arrays["sample_index"], arrays["sample_labels"],
                              int(config["round"]), adapter)
    if P.SECAGG in msg.content:  # secure aggregation: only the masked counts leave
        from clients import secure

        masked = secure.masked_values(msg, context, counts.astype(np.float64))
        return Message(RecordDict({P.MASKED: record_of({"masked": masked}), **held}), reply_to=msg)
    # in the clear, only the bins that hold a sample: a client's few samples fill few of the 8,192
    bins = np.flatnonzero(counts).astype(np.int32)
    return Message(RecordDict({P.SCORE_COUNTS: record_of({"bins": bins, "counts": counts[bins]}), **held}), reply_to=msg)


@app.query(P.SITE_MODEL)
def site_model(msg: Message, context: Context) -> Message:
    """A site keeps the merged model's update (and counts its test samples it names right)."""
    from clients.site_app import site_model as keep

    return keep(msg, context, node.setup(msg, context))


@app.query(P.SITE_COUNTS)
def site_counts(msg: Message, context: Context) -> Message:
    """A site's test counts, masked for the secure sum."""
    from clients.site_app import site_counts as counts

    return counts(msg, context, node.setup(msg, context))


@app.query(P.SECAGG_KEYS)
def secagg_keys(msg: Message, context: Context) -> Message:
    """Secure aggregation, step 1: this round's public keys."""
    from clients import secure

    return Message(RecordDict({P.SECAGG: secure.keys(msg, context)}), reply_to=msg)


@app.query(P.SECAGG_SHARES)
def secagg_shares(msg: Message, context: Context) -> Message:
    """Secure aggregation, step 2: shares of this client's secrets, encrypted for each holder."""
    from clients import secure

    return Message(RecordDict({P.SHARES: secure.shares(msg, context)}), reply_to=msg)


@app.query(P.SECAGG_UNMASK)
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Secure aggregation, step 4: the shares that unmask the survivors' sum."""
    from clients import secure

    return Message(RecordDict({P.SHARES: secure.unmask(msg, context)}), reply_to=msg)


@app.query(P.IDENTIFY)
def identify(msg: Message, context: Context) -> Message:
    scenario = str(msg.content[P.PREPARE]["scenario"]) if P.PREPARE in msg.content else None
    if worker.wanted(context.node_config):
        # its imports, and the data of the scenario the query names, overlap the server's preparation
        worker.warm(context.node_config, scenario)
    elif scenario:  # a long-lived process (simulation): the same, in a thread, while it answers the others
        node.warm(scenario, context.node_config)
    identity = ConfigRecord({"partition_id": int(context.node_config["partition-id"]),
                             "setup_digest": node.held_digest(context),
                             "weights": node.held_weights(context.node_config)})
    return Message(RecordDict({P.IDENTITY: identity}), reply_to=msg)
