"""Flower strategy of the ``fedavg_finetune`` baseline: FedAvg of a backbone and a growing head."""

from __future__ import annotations

from flwr.app import Message, MessageType

from fedrecon import protocol as P
from fedrecon.finetune import IDS, fedavg
from fedrecon.plan import Arrival, Plan
from strategies.recon import ReconStrategy, to_record
from strategies.validation import check_model_update, decode_reply, model_reply_limit


class FedAvgFinetune(ReconStrategy):
    """The standard federated recipe on class-incremental tasks, a baseline.

    The plan, clock, retries, faults and traffic accounting are ReconStrategy's; what
    travels differs. Each task message carries the whole global model (backbone and
    head); each reply the client's fine-tuned model, which the server averages
    (``fedrecon.finetune.fedavg``, weights: the tasks' sample counts). No class
    statistics: ``stats`` stays empty.

    Parameters
    ----------
    model : dict of ndarray
        The global model before any task (``fedrecon.finetune.initial_model``).
    Other parameters as :class:`ReconStrategy`.
    """

    message_type = f"{MessageType.TRAIN}.{P.FINETUNE}"

    def __init__(self, plan: Plan, task_config: dict, model: dict, dim: int, **kwargs):
        super().__init__(plan, "exact", task_config, {}, dim, **kwargs)
        self.model = dict(model)

    def method(self) -> str:
        return f"fedavg_finetune: {len(self.model)} model arrays sent with every task"

    def _round_records(self) -> tuple[dict, dict]:
        return {P.MODEL: to_record(self.model)}, {}

    def _add_backbone(self, content, client: int, server_round: int) -> None:
        """Nothing: the model, backbone included, travels with every task."""

    def check_reply(self, reply: Message, arrival: Arrival) -> dict:
        limit = self.max_reply_bytes or model_reply_limit(self.model, arrival)
        return check_model_update(decode_reply(reply, limit, P.MODEL_UPDATE), self.model, arrival)

    def fold(self, accepted: list[tuple[Arrival, dict]]) -> None:
        if accepted:
            self.model = fedavg(self.model, [m for _, m in accepted], [float(len(a.sample_labels)) for a, _ in accepted])

    def classes_learned(self) -> int:
        return len(self.model[IDS])

    def model_arrays(self) -> dict:
        """The global model, checkpointed beside the (empty) statistics."""
        return dict(self.model)

    def restore(self, state: dict, stats, done: int, model: dict | None = None) -> None:
        super().restore(state, stats, done)
        if model:
            self.model = dict(model)
