"""The ``fedavg_finetune`` model as it travels: one flat dict of arrays,
``backbone.<state key>`` for every entry of the backbone's state dict (buffers too), and
``head.ids``, ``head.weight`` ``(K, d)``, ``head.bias`` ``(K,)``, rows sorted by class id.

numpy only: the server's checks of a reply (strategies/validation.py) read it without
torch; training and averaging are in fedrecon/learning/finetune.py.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

BACKBONE, IDS, WEIGHT, BIAS = "backbone.", "head.ids", "head.weight", "head.bias"


def backbone_state(model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len(BACKBONE):]: v for k, v in model.items() if k.startswith(BACKBONE)}


def grow_head(model: Mapping[str, np.ndarray], classes) -> dict[str, np.ndarray]:
    """``model`` with zero rows appended for the classes its head lacks (rows sorted by id).

    Zero rows start every new class at the same logit; the first steps separate them.
    """
    ids = model[IDS]
    new = np.setdiff1d(np.asarray(classes, dtype=np.int64), ids)
    all_ids = np.concatenate([ids, new])
    order = np.argsort(all_ids, kind="stable")
    dim = model[WEIGHT].shape[1]
    weight = np.concatenate([model[WEIGHT], np.zeros((len(new), dim), np.float32)])[order]
    bias = np.concatenate([model[BIAS], np.zeros(len(new), np.float32)])[order]
    return {**model, IDS: all_ids[order], WEIGHT: weight, BIAS: bias}
