"""Flower strategy of the ``fedavg_finetune`` baseline: FedAvg of a backbone and a growing head."""

from __future__ import annotations

from flwr.app import Message, MessageType

from fedrecon import protocol as P
from fedrecon.learning.finetune import IDS, fedavg
from fedrecon.plan.records import Arrival, Plan
from fedrecon.scenario.model import Scenario
from strategies.recon import ReconStrategy
from strategies.records import to_record
from strategies.validation import check_model_update, decode_reply, model_reply_limit


class FedAvgFinetune(ReconStrategy):
    """The standard federated recipe on class-incremental tasks, a baseline.

    The plan, clock, retries, faults and traffic accounting are ReconStrategy's; what
    travels differs. Each task message carries the whole global model (backbone and
    head); each reply the client's fine-tuned model, which the server averages
    (``fedrecon.learning.finetune.fedavg``, weights: the tasks' sample counts). No class
    statistics: ``stats`` stays empty.

    Parameters
    ----------
    model : dict of ndarray
        The global model before any task (``fedrecon.learning.finetune.initial_model``).
    Other parameters as :class:`ReconStrategy` (no backbone: the model carries it).
    """

    message_type = f"{MessageType.TRAIN}.{P.FINETUNE}"

    def __init__(self, plan: Plan, scenario: Scenario, setup: dict[str, str], model: dict, dim: int):
        super().__init__(plan, scenario, setup, {}, dim)
        self.model = dict(model)

    def method(self) -> str:
        return f"fedavg_finetune: {len(self.model)} model arrays sent with every task"

    def round_records(self) -> tuple[dict, dict]:
        return {P.MODEL: to_record(self.model)}, {}

    def check_reply(self, reply: Message, arrival: Arrival) -> dict:
        limit = self.scenario.faults.max_reply_bytes or model_reply_limit(self.model, arrival)
        return check_model_update(decode_reply(reply, limit, P.MODEL_UPDATE), self.model, arrival)

    def fold(self, server_round: int, accepted: list[tuple[Arrival, dict]]) -> None:
        if accepted:
            self.model = fedavg(self.model, [m for _, m in accepted], [float(len(a.sample_labels)) for a, _ in accepted])

    def classes_learned(self) -> int:
        return len(self.model[IDS])

    def model_arrays(self) -> dict:
        """The global model, checkpointed beside the (empty) statistics."""
        return dict(self.model)

    def restore(self, state: dict, stats, model: dict | None = None) -> None:
        super().restore(state, stats)
        if model:
            self.model = dict(model)
