"""Open-set accuracy of the unknown-input score, round by round (metrics.jsonl's ``open_auroc``, ``oos_auroc``).

The score is the exported model's (:mod:`fedrecon.model.unknown`), computed from the
statistics the scoring's head is built from (the released ones under ``privacy.dp``) and
the same test features. ``open_auroc``: how well it ranks the test samples of the classes
no client has learned yet (the scenario's other classes) above those of the classes seen
so far; null where there is no such class (the last round) or nothing to score.
``oos_auroc`` (CLINC150): the same against the dataset's own out-of-scope test sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.dp import released
from fedrecon.learning.evaluate import Evaluator
from fedrecon.learning.stats import ClassStats
from fedrecon.model.unknown import UnknownScore, unknown_parameters

# Datasets with out-of-scope test samples of their own: a loader of them (a ClassDataset) by data.dataset
OUT_OF_SCOPE = {"clinc150": "fedrecon.data.text:clinc150_out_of_scope"}


def auroc(known: np.ndarray, unknown: np.ndarray) -> float | None:
    """Area under the ROC curve of scores where ``unknown`` should rank above ``known``
    (0.5: chance, 1: every unknown above every known); None if either side is empty.

    Mann-Whitney's U over the pooled ranks, a tie counting half (what scikit-learn's
    ``roc_auc_score`` gives): written in numpy because scikit-learn is no dependency of
    fedrecon's (a development extra brings it into the venv, a user's install lacks it).
    """
    if not len(known) or not len(unknown):
        return None
    scores = np.r_[np.asarray(known, dtype=np.float64), np.asarray(unknown, dtype=np.float64)]
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)  # 1-based, the mean rank of a tie
    n = len(unknown)
    return float((ranks[len(known):].sum() - n * (n + 1) / 2) / (len(known) * n))


@dataclass
class _Scored:
    """The unknown-input score of one head, and the scores it gave: by test class, and the
    out-of-scope samples' (None: not yet)."""

    head: object
    score: UnknownScore
    classes: dict[int, np.ndarray] = field(default_factory=dict)
    outside: np.ndarray | None = None


class OpenSet:
    """The unknown-input score of the scoring's head, and its AUROCs after a round.

    ``evaluator`` is the scoring's: its test features (embedded once by a frozen backbone,
    again after a merged adapter changed) and its head, built once per change of the
    statistics. ``model`` and ``cache`` embed the out-of-scope samples the same way. A
    sample's score is kept while the head is the same, so a round that learns nothing
    costs no scoring (as the accuracy's answers, :mod:`fedrecon.learning.head_cache`).
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
        self._scored: _Scored | None = None

    def reset(self) -> None:
        """Forget the out-of-scope features and every score (the model changed: a merged adapter)."""
        self._outside_features = None
        self._scored = None

    def scored(self, stats: ClassStats) -> _Scored:
        """The unknown-input score of the head the scoring builds from ``stats``, with the
        scores it gave so far."""
        head = self.evaluator.heads.head(stats)
        if self._scored is None or self._scored.head is not head:
            kind, arrays = unknown_parameters(released(stats) if self.noisy else stats, head, self.shrinkage)
            self._scored = _Scored(head, UnknownScore(kind, arrays))
        return self._scored

    def class_scores(self, scored: _Scored, classes: np.ndarray) -> np.ndarray:
        """The scores of the test samples of ``classes``, in the evaluator's order."""
        new = [int(c) for c in classes if int(c) not in scored.classes]
        if new:
            features, labels = self.evaluator.features(np.array(new, dtype=np.int64))
            scores = scored.score.scores(features)
            scored.classes.update((c, scores[labels == c]) for c in new)
        return np.concatenate([scored.classes[int(c)] for c in classes])

    def outside_scores(self, scored: _Scored) -> np.ndarray:
        if self._outside_features is None:
            index = np.arange(len(self.outside.labels))
            self._outside_features = embed_samples(self.model, self.outside, index, self.device, self.cache)
        if scored.outside is None:
            scored.outside = scored.score.scores(self._outside_features)
        return scored.outside

    def row(self, stats: ClassStats | None, server_round: int) -> dict:
        """``open_auroc`` (and ``oos_auroc`` where the dataset has out-of-scope samples) after
        ``server_round``; a value is None where it cannot be measured (``stats`` None: not
        evaluated this round)."""
        seen = self.plan.classes_seen(server_round)
        unseen = np.setdiff1d(self.classes, seen)
        row = {"open_auroc": None, **({"oos_auroc": None} if self.outside is not None else {})}
        if stats is None or len(stats) == 0 or not len(seen):
            return row
        scored = self.scored(stats)
        if len(unseen):
            self.class_scores(scored, self.classes)  # seen and unseen in one pass
            row["open_auroc"] = auroc(self.class_scores(scored, seen), self.class_scores(scored, unseen))
        if self.outside is not None:
            row["oos_auroc"] = auroc(self.class_scores(scored, seen), self.outside_scores(scored))
        return row
