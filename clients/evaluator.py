"""What a client does with an evaluate message: score the merged statistics' head on its test share."""

from __future__ import annotations

import numpy as np

from clients.learner import scored_features
from clients.setup import Setup
from fedrecon.learning.evaluate import count_correct
from fedrecon.learning.stats import ClassStats


def score_share(setup: Setup, merged: dict[str, np.ndarray], sample_index: np.ndarray,
                sample_labels: np.ndarray, round: int, adapter: dict[str, np.ndarray] | None = None) -> tuple[int, int]:
    """(correct, samples) of the head on the merged statistics (``merged``, their arrays)
    on this client's test samples; under adapters, embedded with ``adapter`` (the factors
    the client scores with)."""
    features = scored_features(setup, sample_index, sample_labels, round, adapter)
    stats = ClassStats.from_arrays(merged)
    return count_correct(stats, setup.scenario, features, sample_labels), len(sample_labels)
