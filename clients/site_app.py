"""The ClientApp's site messages: decode, call what a site does (clients/site_task.py), encode the reply."""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import faults
from fedrecon import protocol as P
from fedrecon.data.dataset import DataError


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _record(arrays: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def site_train(msg: Message, context: Context, setup, timings: dict) -> Message:
    """A site task: settle the ledger with the server's accepted tasks, learn what is new,
    reply with its statistics and class names (masked under secure aggregation)."""
    from clients.site_task import learn_offer

    start = time.perf_counter()
    task = dict(msg.content[P.TASK_CONFIG])
    faults.before_task(task)
    config = msg.content[P.SITE_CONFIG]
    secure = P.SECAGG in msg.content
    try:
        noise = float(task["dp_std"]) if "dp_std" in task else None
        offer = learn_offer(setup, context.node_config, str(config["run"]), [str(t) for t in config["accepted"]],
                            secure, timings, noise, int(config.get("dim", 0)))
    except DataError as exc:  # the site's own data: one line naming its file, and the task is not merged
        return Message(RecordDict({P.SITE_TASK: ConfigRecord({"task": "", "error": one_line(exc)})}), reply_to=msg)
    metrics = MetricRecord({"task": int(task["task"]), "samples": max(offer.samples, 0),
                            "seconds": time.perf_counter() - start, **timings})
    if secure:  # only the masked statistics and the offer's id leave (its names are the vocabulary's)
        from clients import secure as secagg

        stats = offer.stats if len(offer.stats) else _empty(msg)  # (noised under privacy.dp: every slot already)
        vector = secagg.masked(msg, context, stats, {}, float(offer.samples))
        return Message(RecordDict({P.MASKED: _record(faults.spoil(task, {"masked": vector})),
                                   P.SITE_TASK: ConfigRecord({"task": offer.task}), P.METRICS: metrics}), reply_to=msg)
    reply = RecordDict({P.SITE_TASK: ConfigRecord({"task": offer.task, "names": offer.names, "samples": offer.samples}),
                        P.METRICS: metrics})
    if offer.task or len(offer.stats):  # (under privacy.dp the noise goes out with nothing new too)
        reply[P.STATS] = _record(faults.spoil(task, offer.stats.to_arrays()))
    return Message(reply, reply_to=msg)


def _empty(msg: Message):
    """Nothing new under secure aggregation: zeros in the round's layout (the site still takes part in the sum)."""
    from fedrecon.learning.stats import ClassStats
    from fedrecon.secagg.layout import Layout

    return ClassStats.empty(Layout.from_json(str(msg.content[P.SECAGG]["layout"])).dim)


def site_model(msg: Message, context: Context, setup) -> Message:
    """Keep the server's update of the merged model (and, when asked, count the test samples it names right)."""
    from clients.site_task import keep_model, test_counts

    config = msg.content[P.SITE_MODEL_CONFIG]
    delta = {k: v.numpy() for k, v in msg.content[P.SITE_MODEL].items()}
    run, version = str(config["run"]), int(config["version"])
    unknown = json.loads(str(config["unknown"])) if "unknown" in config else None
    floor = float(config.get("count_floor", 0.0))  # privacy.dp: the classes the model holds
    held = keep_model(setup, context.node_config, run, delta, [str(n) for n in config["names"]], int(config["base"]),
                      version, int(config["dim"]), unknown, floor)
    metrics, reply = {"version": held}, RecordDict()
    if bool(config["evaluate"]) and held == version:
        try:
            metrics["correct"], metrics["samples"] = test_counts(setup, context.node_config, run, int(config["dim"]),
                                                                 floor)
        except DataError as exc:  # a broken test file: this site is not counted, and says why
            reply[P.SITE_TASK] = ConfigRecord({"error": one_line(exc)})
    reply[P.METRICS] = MetricRecord(metrics)
    return Message(reply, reply_to=msg)


def site_counts(msg: Message, context: Context, setup) -> Message:
    """Under secure aggregation: the test counts of the model this node keeps, masked."""
    from clients import secure as secagg
    from clients.site_task import test_counts

    config = msg.content[P.SITE_MODEL_CONFIG]
    try:
        correct, samples = test_counts(setup, context.node_config, str(config["run"]), int(config["dim"]),
                                       float(config.get("count_floor", 0.0)))
    except DataError:  # counted as no test sample (the update's reply said why, this round)
        correct, samples = 0, 0
    masked = secagg.masked_values(msg, context, np.array([float(correct), float(samples)]))
    return Message(RecordDict({P.MASKED: _record({"masked": masked})}), reply_to=msg)


def site_scores(msg: Message, context: Context, setup) -> np.ndarray:
    """The unknown-input threshold's bin counts of the samples this site merged, under the merged model's score."""
    from clients.site_task import score_counts_of
    from fedrecon.model.unknown import UnknownScore

    config, site = msg.content[P.UNKNOWN_CONFIG], msg.content[P.SITE_CONFIG]
    arrays = {k: v.numpy() for k, v in msg.content[P.UNKNOWN_ARRAYS].items()}
    classes = {k: v.numpy() for k, v in msg.content[P.UNKNOWN_CLASSES].items()}
    names = {str(n): int(i) for n, i in zip(site["names"], classes["ids"])}
    return score_counts_of(setup, context.node_config, str(site["run"]), [str(t) for t in site["accepted"]],
                           UnknownScore(str(config["kind"]), arrays), names, classes)
