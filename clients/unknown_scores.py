"""What a client does with the threshold query: count its training samples' unknown-input scores in the fixed bins."""

from __future__ import annotations

import numpy as np

from clients.learner import scored_features
from clients.setup import Setup
from fedrecon.model.unknown import UnknownScore, score_counts


def count_scores(setup: Setup, kind: str, arrays: dict[str, np.ndarray], classes: dict[str, np.ndarray],
                 sample_index: np.ndarray, sample_labels: np.ndarray, round: int,
                 adapter: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The bin counts of the named samples' scores under the merged model's score
    (``kind``, ``arrays``), each sample left out of its class mean (``classes``: the
    merged ids, counts, means); under adapters, embedded with ``adapter``, the merged one.
    Only the counts leave the client, never a score."""
    features = scored_features(setup, sample_index, sample_labels, round, adapter)
    return score_counts(UnknownScore(kind, arrays).training_scores(features, sample_labels, classes))
