"""What ``fedavg_finetune`` tasks carry and how their replies merge: FedAvg of a backbone and a growing head."""

from __future__ import annotations

from flwr.app import Message, MessageType

from fedrecon import protocol as P
from fedrecon.learning.finetune import fedavg
from fedrecon.plan.records import Arrival
from strategies.state import ServerState
from strategies.validation import check_model_update, decode_reply, model_reply_limit
from strategies.wire import to_record


class Finetune:
    """The standard federated recipe on class-incremental tasks, a baseline.

    The plan, clock, retries, faults and traffic accounting are the task phase's; what
    travels differs. Each task message carries the whole global model (backbone and
    head, ``state.model``); each reply the client's fine-tuned model, which the server
    averages (``fedrecon.learning.finetune.fedavg``, weights: the tasks' sample counts).
    No class statistics: ``state.stats`` stays empty.
    """

    message_type = f"{MessageType.TRAIN}.{P.FINETUNE}"

    def describe(self) -> str:
        return "fedavg_finetune: the whole model sent with every task and averaged"

    def client_records(self, state: ServerState, client: int) -> dict:
        return {}

    def round_records(self, state: ServerState) -> tuple[dict, dict, dict]:
        return {P.MODEL: to_record(state.model)}, {}, {}

    def check(self, state: ServerState, reply: Message, arrival: Arrival, sent: dict) -> dict:
        limit = state.scenario.faults.max_reply_bytes or model_reply_limit(state.model, arrival)
        return check_model_update(decode_reply(reply, limit, P.MODEL_UPDATE), state.model, arrival)

    def fold(self, state: ServerState, server_round: int, accepted: list[tuple[Arrival, dict]]) -> None:
        if accepted:
            state.model = fedavg(state.model, [m for _, m in accepted], [float(len(a.sample_labels)) for a, _ in accepted])
