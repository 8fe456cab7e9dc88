"""What a client does with an evaluate message: score the merged model on its test share."""

from __future__ import annotations

import numpy as np

from clients.learner import adapted_features, task_features
from fedrecon.evaluate import count_correct
from fedrecon.heads import HeadSettings
from fedrecon.stats import ClassStats


def score_share(
    config: dict,
    model: dict[str, np.ndarray],
    sample_index: np.ndarray,
    sample_labels: np.ndarray,
    backbone_state: dict[str, np.ndarray] | None,
    data_root: str,
    adapter: dict[str, np.ndarray] | None = None,
) -> tuple[int, int]:
    """(correct, samples) of the merged head on this client's test samples; under
    adapters, embedded with ``adapter`` (the factors the client scores with)."""
    if adapter is None:
        features = task_features(config, sample_index, sample_labels, backbone_state, data_root)
    else:
        features = adapted_features(config, sample_index, sample_labels, backbone_state, data_root, adapter)
    head = HeadSettings.from_config(config)
    return count_correct(ClassStats.from_arrays(model), head, features, sample_labels), len(sample_labels)
