"""Names of the records that server and clients exchange (one place, no Flower import)."""

# server -> client, message type "train"
TASK_CONFIG = "task"  # ConfigRecord: round, task, dataset spec, backbone name/digest, device
TASK_ARRAYS = "task_arrays"  # ArrayRecord: sample_index, sample_labels, classes
BACKBONE = "backbone"  # ArrayRecord: backbone state, sent on a client's first task
ADAPTER = "adapter"  # ArrayRecord: the server's adapter state (factors only; merge.adapters other than none)

# client -> server
STATS = "stats"  # ArrayRecord: ids, counts, sums (only the classes of this task)
METRICS = "metrics"  # MetricRecord: samples, seconds, task
ADAPTER_UPDATE = "adapter_update"  # ArrayRecord: <layer>.A / <layer>.B the client trained (empty: it did not)
DRIFT = "drift"  # ArrayRecord: sums, weights of the drift of the server's prototypes (staleness: compensate)

# server -> client, message type "train.finetune" (merge.method: fedavg_finetune): TASK_CONFIG,
# TASK_ARRAYS and MODEL (backbone.<key>, head.ids, head.weight, head.bias); reply MODEL_UPDATE, METRICS
FINETUNE = "finetune"
MODEL_UPDATE = "model_update"  # ArrayRecord: the client's trained model, same keys as MODEL

# server -> client, message type "train.adapt" (adapters.rounds > 0): TASK_CONFIG (with "step"),
# TASK_ARRAYS, ADAPTER and, on first contact, BACKBONE; reply ADAPTER_UPDATE, METRICS (loss)
ADAPT = "adapt"

# server -> client, message type "query.identify"; reply ConfigRecord IDENTITY
IDENTIFY = "identify"
IDENTITY = "identity"

# server -> client, message type "evaluate" (evaluation.where: clients)
EVAL_CONFIG = "eval"  # ConfigRecord: dataset spec, backbone name/digest, device, metric
EVAL_ARRAYS = "eval_arrays"  # ArrayRecord: sample_index, sample_labels (this client's test share)
MODEL = "model"  # ArrayRecord: merged ids, counts, sums (evaluate); the fedavg_finetune model (train.finetune)
# reply: METRICS with correct, samples
