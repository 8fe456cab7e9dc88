"""What a client does with an evaluate message: score the merged model on its test share."""

from __future__ import annotations

import numpy as np

from clients.learner import embed_samples
from fedrecon.evaluate import count_correct
from fedrecon.stats import ClassStats


def score_share(
    config: dict,
    model: dict[str, np.ndarray],
    sample_index: np.ndarray,
    sample_labels: np.ndarray,
    backbone_state: dict[str, np.ndarray] | None,
    data_root: str,
) -> tuple[int, int]:
    """(correct, samples) of the merged nearest-mean head on this client's test samples."""
    features = embed_samples(config, sample_index, sample_labels, backbone_state, data_root)
    return count_correct(ClassStats.from_arrays(model), str(config["metric"]), features, sample_labels), len(sample_labels)
