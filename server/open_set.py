"""Open-set accuracy of the unknown-input score, round by round (metrics.jsonl's ``open_auroc``, ``oos_auroc``).

The score is the exported model's (:mod:`fedrecon.model.unknown`), computed from the
statistics the scoring's head is built from (the released ones under ``privacy.dp``) and
the same test features. ``open_auroc``: how well it ranks the test samples of the classes
no client has learned yet (the scenario's other classes) above those of the classes seen
so far; null where there is no such class (the last round) or nothing to score.
``oos_auroc`` (CLINC150): the same against the dataset's own out-of-scope test sentences.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.dp import released
from fedrecon.learning.evaluate import Evaluator
from fedrecon.learning.stats import ClassStats
from fedrecon.model.unknown import UnknownScore, unknown_parameters

# Datasets with out-of-scope test samples of their own: a loader of them (a ClassDataset) by data.dataset
OUT_OF_SCOPE = {"clinc150": "fedrecon.data.text:clinc150_out_of_scope"}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float | None:
    """Area under the ROC curve of scores where ``unknown`` should rank above ``known``
    (0.5: chance, 1: every unknown above every known); None if either side is empty."""
    if not len(known) or not len(unknown):
        return None
    truth = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return float(roc_auc_score(truth, np.r_[known, unknown]))


class OpenSet:
    """The unknown-input score of the scoring's head, and its AUROCs after a round.

    ``evaluator`` is the scoring's: its test features (embedded once by a frozen backbone,
    again after a merged adapter changed) and its head, built once per change of the
    statistics. ``model`` and ``cache`` embed the out-of-scope samples the same way.
    """

    def __init__(self, prep, evaluator: Evaluator, model, device, cache_folder: str | None, noisy: bool):
        s = prep.scenario
        self.plan, self.evaluator, self.model, self.device, self.noisy = prep.plan, evaluator, model, device, noisy
        self.shrinkage = s.merge.shrinkage
        self.classes = prep.plan.classes_seen(prep.plan.rounds)  # every class the scenario teaches
        self.outside = None
        if s.data.dataset in OUT_OF_SCOPE:
            from fedrecon.plugins import load_object

            self.outside = load_object(OUT_OF_SCOPE[s.data.dataset])(s.data)
        frozen = prep.adapted is None
        self.cache = EmbeddingCache(prep.digest, self.outside.fingerprint, cache_folder) \
            if self.outside is not None and frozen else None
        self._outside_features: np.ndarray | None = None
        self._scorer: tuple[object, UnknownScore] | None = None  # (the head it was made for, the score)

    def reset(self) -> None:
        """Forget the out-of-scope features (the model changed: a merged adapter)."""
        self._outside_features = None

    def score(self, stats: ClassStats) -> UnknownScore:
        """The unknown-input score of the head the scoring builds from ``stats``."""
        head = self.evaluator.heads.head(stats)
        if self._scorer is None or self._scorer[0] is not head:
            kind, arrays = unknown_parameters(released(stats) if self.noisy else stats, head, self.shrinkage)
            self._scorer = (head, UnknownScore(kind, arrays))
        return self._scorer[1]

    def outside_features(self) -> np.ndarray:
        if self._outside_features is None:
            index = np.arange(len(self.outside.labels))
            self._outside_features = embed_samples(self.model, self.outside, index, self.device, self.cache)
        return self._outside_features

    def row(self, stats: ClassStats | None, server_round: int) -> dict:
        """``open_auroc`` (and ``oos_auroc`` where the dataset has out-of-scope samples) after
        ``server_round``; a value is None where it cannot be measured (``stats`` None: not
        evaluated this round)."""
        seen = self.plan.classes_seen(server_round)
        unseen = np.setdiff1d(self.classes, seen)
        row = {"open_auroc": None, **({"oos_auroc": None} if self.outside is not None else {})}
        if stats is None or len(stats) == 0 or not len(seen):
            return row
        unknown = self.score(stats)
        known = unknown.scores(self.evaluator.features(seen)[0])
        if len(unseen):
            row["open_auroc"] = auroc(known, unknown.scores(self.evaluator.features(unseen)[0]))
        if self.outside is not None:
            row["oos_auroc"] = auroc(known, unknown.scores(self.outside_features()))
        return row
