"""What server and clients exchange: record names, config keys and the run's setup
(one place, no Flower import).

A client receives the run's **setup** once (with its first message, or again after
its node lost it): the scenario as JSON and the backbone's digest, and the backbone
weights when they are not installed with a wheel. Every later message carries only
what changes per task.
"""

from __future__ import annotations

import hashlib

# --- server -> client ---------------------------------------------------------------------
SETUP = "setup"  # ConfigRecord: scenario (JSON), backbone_digest, digest (of both); see setup_record
BACKBONE = "backbone"  # ArrayRecord: backbone state, sent with the setup unless its weights are installed
# message type "train": a task to learn
TASK_CONFIG = "task_config"  # ConfigRecord: round, task (the plan's number of the client's task), learned (the
#   client's tasks the server accepted so far: its adapter schedule counts them), fault keys; "step" in train.adapt
TASK_ARRAYS = "task_arrays"  # ArrayRecord: sample_index, sample_labels; prototypes (staleness: compensate);
# known_ids, known_counts, known_sums (an adapter step under classifier: federation: the classes the federation knows)
ADAPTER = "adapter"  # ArrayRecord: the server's adapter state (factors only; merge.adapters other than none)

# --- client -> server -----------------------------------------------------------------------
STATS = "stats"  # ArrayRecord: ids, counts, sums (only the classes of this task)
METRICS = "metrics"  # MetricRecord: samples, seconds, task
ADAPTER_UPDATE = "adapter_update"  # ArrayRecord: <layer>.A / <layer>.B the client trained (empty: it did not)
STEP_CLASSES = "step_classes"  # ArrayRecord: ids, counts, sums of an adapter step's task (classifier: federation)
DRIFT = "drift"  # ArrayRecord: sums, weights of the drift of the server's prototypes (staleness: compensate)

# message type "train.finetune" (merge.method: fedavg_finetune): TASK_CONFIG, TASK_ARRAYS and
# MODEL; reply MODEL_UPDATE, METRICS
FINETUNE = "finetune"
MODEL = "model"  # ArrayRecord: the fedavg_finetune model (backbone.<key>, head.ids, head.weight, head.bias)
MODEL_UPDATE = "model_update"  # ArrayRecord: the client's trained model, same keys as MODEL

# message type "train.adapt" (adapters.steps > 0): TASK_CONFIG (with "step"), TASK_ARRAYS,
# ADAPTER; reply ADAPTER_UPDATE, METRICS (loss)
ADAPT = "adapt"

# message type "query.identify", optionally with ConfigRecord PREPARE: scenario (JSON), the
# data a node may prepare while the server prepares; reply ConfigRecord IDENTITY:
# partition_id, setup_digest
IDENTIFY = "identify"
IDENTITY = "identity"
PREPARE = "prepare"
# ConfigRecord partition_id: the client a message with the setup is meant for (the node
# refuses it if it is another client: the server's node memory was wrong)
FOR_CLIENT = "for_client"

# message type "evaluate" (evaluation.where: clients)
EVAL_CONFIG = "eval_config"  # ConfigRecord: round
EVAL_ARRAYS = "eval_arrays"  # ArrayRecord: sample_index, sample_labels (this client's test share)
MERGED_STATS = "merged_stats"  # ArrayRecord: the merged statistics (ClassStats.to_arrays: ids, counts, sums, ...)
# ADAPTER: the server's merged adapter, if any (merge.adapters none: the client scores with its own)
# reply: METRICS with correct, samples

# message type "query.unknown_scores" (the unknown-input threshold, unknown.quantile): UNKNOWN_CONFIG,
# UNKNOWN_ARRAYS, UNKNOWN_CLASSES, EVAL_ARRAYS (the client's accepted training samples), ADAPTER (the merged one, if any);
# reply SCORE_COUNTS: "bins" (int32, the bins holding a sample) and their "counts" (int64): the samples'
# unknown-input scores counted in fedrecon.model.unknown's bins.
# Under secure aggregation the counts are a second SecAgg+ sum of the round (its "round" -round):
# keys, shares, this query with SECAGG {round, survivors} and SHARES added (reply MASKED), unmask
UNKNOWN_SCORES = "unknown_scores"
UNKNOWN_CONFIG = "unknown_config"  # ConfigRecord: round, kind (of the score)
UNKNOWN_ARRAYS = "unknown_arrays"  # ArrayRecord: the score's arrays (fedrecon.model.unknown.unknown_parameters)
UNKNOWN_CLASSES = "unknown_classes"  # ArrayRecord: the merged ids, counts (and means, for cosine): leave-one-out
SCORE_COUNTS = "score_counts"

# Secure aggregation (privacy.secure_aggregation), one round's exchange (fedrecon.secagg.protocol):
#   query.secagg_keys   SECAGG {round}                        -> reply SECAGG {c, s} (public keys)
#   query.secagg_shares SECAGG {round, threshold}, PEERS       -> reply SHARES {holder id: ciphertext}
#   train               + SECAGG {round, layout, survivors}, SHARES (those for this client) -> reply MASKED, METRICS
#   query.secagg_unmask SECAGG {round, survivors, dropped}     -> reply SHARES {"b:<id>" / "s:<id>": share}
SECAGG = "secagg"  # ConfigRecord
PEERS = "peers"  # ConfigRecord: client id -> its two public keys (64 bytes)
SHARES = "shares"  # ConfigRecord: encrypted shares, or revealed ones
MASKED = "masked"  # ArrayRecord: "masked", the masked vector as bytes (16 a value)
SECAGG_KEYS, SECAGG_SHARES, SECAGG_UNMASK = "secagg_keys", "secagg_shares", "secagg_unmask"

# Sites (a scenario's sites section): each client learns what its own folder holds.
# A task message ("train") carries SITE_CONFIG {run (the run's token), accepted (this site's task ids the
# server merged, every one so far)} and no sample indices; the reply STATS (ids: positions in "names"),
# SITE_TASK {task (the offer's id, "": nothing new), names (the classes of STATS, in order), samples}.
# Under secure aggregation the reply is MASKED in the vocabulary's layout, and SITE_TASK {task} only.
# Then "query.site_model": SITE_MODEL_CONFIG {round, base, version, names (of the delta's ids), evaluate},
# SITE_MODEL (the merged statistics' rows and shared arrays changed since base: fedrecon.learning.stats_delta)
# -> reply METRICS {version (held after it), correct, samples (on the site's test part, when evaluate)}.
# Under secure aggregation the counts are a second SecAgg+ sum (round -round): keys, shares,
# "query.site_counts" with SECAGG and SHARES (reply MASKED: correct, samples), unmask.
SITE_CONFIG = "site_config"  # ConfigRecord: run, accepted
SITE_TASK = "site_task"  # ConfigRecord: task, names, samples
SITE_MODEL = "site_model"  # message "query.site_model"; ArrayRecord: the delta
SITE_MODEL_CONFIG = "site_model_config"  # ConfigRecord: round, base, version, names, evaluate
SITE_COUNTS = "site_counts"  # message "query.site_counts": the evaluation counts, masked

# Keys of an injected fault in TASK_CONFIG (faults.inject).
FAULT_KIND = "fault"
FAULT_SECONDS = "fault_seconds"


def setup_record(scenario_json: str, backbone_digest: str) -> dict[str, str]:
    """The setup's entries; ``digest`` names this exact pair (a node that holds it needs no copy)."""
    digest = hashlib.sha256(f"{scenario_json}\x00{backbone_digest}".encode()).hexdigest()[:16]
    return {"scenario": scenario_json, "backbone_digest": backbone_digest, "digest": digest}
