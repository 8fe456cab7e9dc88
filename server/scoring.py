"""How the server scores the global model after a round."""

from __future__ import annotations

import copy

import numpy as np

from fedrecon.backbones.cache import EmbeddingCache
from fedrecon.backbones.embed import pick_device
from fedrecon.learning.evaluate import Evaluator
from fedrecon.learning.finetune import class_counts as finetune_counts
from server.open_set import OpenSet
from server.prepare import Prepared
from strategies.state import ServerState


class Scoring:
    """The server's accuracy of the global model on the test samples of the classes seen.

    The merged statistics are scored by the scenario's head on the backbone's features
    (embedded once: the backbone is frozen), under the merged adapter when there is one
    (re-embedded when it changes); ``fedavg_finetune`` scores its global model; the
    ``local`` baseline each client's own head, averaged; ``evaluation.where: clients``
    adds up what the clients counted. After a merge of statistics scored on the server,
    :meth:`open_set` measures the unknown-input score on the same features
    (:mod:`server.open_set`).
    """

    def __init__(self, prep: Prepared, state: ServerState):
        s = prep.scenario
        self.scenario, self.plan, self.dataset, self.state = s, prep.plan, prep.dataset, state
        self.device = pick_device(s.model.device)
        self.finetuning = s.merge.method == "fedavg_finetune"
        self.tuned = copy.deepcopy(prep.model) if self.finetuning else None  # the module the global model is scored in
        self.adapted = prep.adapted
        # under adapters, features move with the merged adapter: no embedding cache
        cache = None if self.adapted else EmbeddingCache(prep.digest, prep.dataset.fingerprint, s.model.embedding_cache)
        model = self.adapted.model if self.adapted else prep.model
        self.evaluator = Evaluator(prep.dataset, model, prep.plan, s, self.device, cache, noisy=state.budget is not None,
                                   heads=state.heads)
        self.scored_version = -1
        # the unknown-input score reads merged statistics, scored on the server
        measured = s.evaluation.where == "server" and s.evaluation.open_set and state.own is None and not self.finetuning
        self.open = OpenSet(prep, self.evaluator, model, self.device, s.model.embedding_cache,
                            noisy=state.budget is not None) if measured else None

    def score(self, server_round: int) -> tuple[float | None, tuple | None]:
        """Accuracy after ``server_round`` (None: not evaluated this round) and, where the
        server scored every class, ``(ids, correct, total)`` per class seen."""
        s, state = self.scenario, self.state
        if s.evaluation.where == "clients":
            return state.client_accuracy(server_round), None
        if not s.evaluation.due(server_round, self.plan.rounds):
            return None, None
        seen = self.plan.classes_seen(server_round)
        adapters = state.adapters
        if adapters is not None and adapters.version != self.scored_version:
            # score under the merged adapter (merge.adapters none: the server holds none, the frozen backbone)
            self.adapted.load(adapters.start_for(0, server_round + 1))
            self.evaluator.reset()
            if self.open is not None:
                self.open.reset()
            self.scored_version = adapters.version
        # noisy statistics (privacy.dp) are post-processed by the evaluator, before a head is built
        if state.own is not None:
            # no merge: each client's own head, averaged over the clients that learned something
            own = [self.evaluator.accuracy(stats, seen, client) for client, stats in state.own.items()]
            return (float(np.mean(own)) if own else 0.0), None
        if self.finetuning:
            correct, total = finetune_counts(self.tuned, state.model, self.dataset, self.plan, seen, self.device)
        else:
            correct, total = self.evaluator.class_counts(state.stats, seen)  # the merged statistics, not decoded again
        accuracy = float(correct.sum() / total.sum()) if total.sum() else float("nan")
        return accuracy, (seen, correct, total)

    def open_set(self, server_round: int) -> dict:
        """``open_auroc`` (and ``oos_auroc``) after ``server_round``, scored after :meth:`score`
        on its features and head; None where not measured this round; no keys where the
        run measures none (evaluation on the clients, no merge, ``fedavg_finetune``)."""
        if self.open is None:
            return {}
        due = self.scenario.evaluation.due(server_round, self.plan.rounds)
        return self.open.row(self.state.stats if due else None, server_round)
