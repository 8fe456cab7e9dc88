"""The ClientApp's site messages: decode, call what a site does (clients/site_ops.py, in the
node's worker where there is one), encode the reply."""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import faults, node
from clients.records import arrays_of, record_of
from clients.site_ops import call, one_line
from fedrecon import protocol as P
from fedrecon.data.dataset import DataError


def site_train(msg: Message, context: Context, setup, timings: dict) -> Message:
    """A site task: settle the ledger with the server's accepted tasks, learn what is new,
    reply with its statistics and class names (masked under secure aggregation)."""
    from fedrecon.learning.stats import ClassStats

    start = time.perf_counter()
    task = dict(msg.content[P.TASK_CONFIG])
    faults.before_task(task)
    config = msg.content[P.SITE_CONFIG]
    secure = P.SECAGG in msg.content
    params = {"run": str(config["run"]), "accepted": [str(t) for t in config["accepted"]], "secure": secure,
              "noise": float(task["dp_std"]) if "dp_std" in task else None, "dim": int(config.get("dim", 0))}
    try:
        offer, arrays = call(node.setup_record(context), context.node_config, "offer", params)
    except DataError as exc:  # the site's own data: one line naming its file, and the task is not merged
        return Message(RecordDict({P.SITE_TASK: ConfigRecord({"task": "", "error": one_line(exc)})}), reply_to=msg)
    metrics = MetricRecord({"task": int(task["task"]), "samples": max(int(offer["samples"]), 0),
                            "seconds": time.perf_counter() - start, **timings, **offer["timings"]})
    if secure:  # only the masked statistics and the offer's id leave (its names are the vocabulary's)
        from clients import secure as secagg

        stats = ClassStats.from_arrays(arrays) if arrays else _empty(msg)  # (noised under privacy.dp: every slot)
        vector = secagg.masked(msg, context, stats, {}, float(offer["samples"]))
        return Message(RecordDict({P.MASKED: record_of(faults.spoil(task, {"masked": vector})),
                                   P.SITE_TASK: ConfigRecord({"task": offer["task"]}), P.METRICS: metrics}), reply_to=msg)
    reply = RecordDict({P.SITE_TASK: ConfigRecord({"task": offer["task"], "names": list(offer["names"]),
                                                   "samples": int(offer["samples"])}), P.METRICS: metrics})
    if arrays:  # nothing new: no statistics (under privacy.dp the noise goes out with nothing new too)
        reply[P.STATS] = record_of(faults.spoil(task, arrays))
    return Message(reply, reply_to=msg)


def _empty(msg: Message):
    """Nothing new under secure aggregation: zeros in the round's layout (the site still takes part in the sum)."""
    from fedrecon.learning.stats import ClassStats
    from fedrecon.secagg.layout import Layout

    return ClassStats.empty(Layout.from_json(str(msg.content[P.SECAGG]["layout"])).dim)


def site_model(msg: Message, context: Context, setup) -> Message:
    """Keep the server's update of the merged model (and, when asked, count the test samples it names right)."""
    config = msg.content[P.SITE_MODEL_CONFIG]
    params = {"run": str(config["run"]), "names": [str(n) for n in config["names"]], "base": int(config["base"]),
              "version": int(config["version"]), "dim": int(config["dim"]), "evaluate": bool(config["evaluate"]),
              "unknown": json.loads(str(config["unknown"])) if "unknown" in config else None,
              "floor": float(config.get("count_floor", 0.0))}  # privacy.dp: the classes the model holds
    answer, _ = call(node.setup_record(context), context.node_config, "keep", params, arrays_of(msg.content[P.SITE_MODEL]))
    reply = RecordDict()
    if "error" in answer:
        reply[P.SITE_TASK] = ConfigRecord({"error": answer.pop("error")})
    reply[P.METRICS] = MetricRecord({k: int(v) for k, v in answer.items()})
    return Message(reply, reply_to=msg)


def site_counts(msg: Message, context: Context, setup) -> Message:
    """Under secure aggregation: the test counts of the model this node keeps, masked."""
    from clients import secure as secagg

    config = msg.content[P.SITE_MODEL_CONFIG]
    params = {"run": str(config["run"]), "dim": int(config["dim"]), "floor": float(config.get("count_floor", 0.0))}
    answer, _ = call(node.setup_record(context), context.node_config, "counts", params)
    masked = secagg.masked_values(msg, context, np.array([float(answer["correct"]), float(answer["samples"])]))
    return Message(RecordDict({P.MASKED: record_of({"masked": masked})}), reply_to=msg)


def site_scores(msg: Message, context: Context, setup) -> tuple[np.ndarray | None, int]:
    """Take the round's model update the query brings, then the unknown-input threshold's
    bin counts of the samples this site merged under that model's score (None: the update
    started from a version this site does not hold), and the version it holds."""
    site, config = msg.content[P.SITE_CONFIG], msg.content[P.SITE_MODEL_CONFIG]
    params = {"run": str(site["run"]), "accepted": [str(t) for t in site["accepted"]],
              "names": [str(n) for n in config["names"]], "base": int(config["base"]), "version": int(config["version"]),
              "dim": int(config["dim"]), "floor": float(config.get("count_floor", 0.0))}
    answer, out = call(node.setup_record(context), context.node_config, "scores", params,
                       arrays_of(msg.content[P.SITE_MODEL]))
    return out.get("counts"), int(answer["version"])
