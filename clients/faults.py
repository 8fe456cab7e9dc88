"""Faults a client fakes on the server's request (``faults.inject`` in a scenario)."""

from __future__ import annotations

import time

import numpy as np

from fedrecon.protocol import FAULT_KIND, FAULT_SECONDS


class InjectedFault(RuntimeError):
    """Raised on purpose: the scenario asked this client to fail this round."""


def before_task(task: dict) -> None:
    """Fail or stall as the task config says; do nothing for an ordinary task."""
    kind = task.get(FAULT_KIND)
    if kind in ("raise", "drop_mid_aggregation"):  # the latter: after the key exchange, before the masked input
        raise InjectedFault(f"injected fault ({kind}) in round {task.get('round')}")
    if kind == "timeout":
        # Answer late: the server has given up on this reply by then.
        time.sleep(float(task[FAULT_SECONDS]))


def spoil(task: dict, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Garbage instead of a reply when asked (NaN sums, NaN in a model's largest float
    array, random bytes for a masked vector), else ``arrays`` unchanged."""
    if task.get(FAULT_KIND) != "garbage":
        return arrays
    if "masked" in arrays:  # under secure aggregation the server sees garbage only in the round's sum
        return {"masked": np.random.default_rng().integers(0, 256, arrays["masked"].shape, dtype=np.uint8)}
    key = "sums" if "sums" in arrays else max((k for k, v in arrays.items() if v.dtype.kind == "f"), key=lambda k: arrays[k].size)
    return {**arrays, key: np.full_like(arrays[key], np.nan)}
