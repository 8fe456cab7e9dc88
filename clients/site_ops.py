"""A site's work, run where a planned task's is: in a SuperNode's long-lived worker in
deployment (clients/worker.py: the per-message ClientApp process then imports no torch),
else in this process. Each operation takes plain parameters and arrays and returns them,
so that it crosses the worker's socket unchanged."""

from __future__ import annotations

import numpy as np

from clients import worker
from fedrecon.data.dataset import DataError


def one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _offer(setup, node_config, p: dict, arrays: dict) -> tuple[dict, dict]:
    from clients.site_task import learn_offer

    timings: dict = {}
    offer = learn_offer(setup, node_config, p["run"], p["accepted"], p["secure"], timings, p["noise"], p["dim"])
    out = offer.stats.to_arrays() if len(offer.stats) else {}
    return {"names": offer.names, "task": offer.task, "samples": offer.samples, "timings": timings}, out


def _keep(setup, node_config, p: dict, delta: dict) -> tuple[dict, dict]:
    from clients.site_task import keep_model, test_counts

    held = keep_model(setup, node_config, p["run"], delta, p["names"], p["base"], p["version"], p["dim"], p["unknown"],
                      p["floor"])
    answer = {"version": held}
    if p["evaluate"] and held == p["version"]:
        try:
            answer["correct"], answer["samples"] = test_counts(setup, node_config, p["run"], p["dim"], p["floor"])
        except DataError as exc:  # a broken test file: this site is not counted, and says why
            answer["error"] = one_line(exc)
    return answer, {}


def _counts(setup, node_config, p: dict, arrays: dict) -> tuple[dict, dict]:
    from clients.site_task import test_counts

    try:
        correct, samples = test_counts(setup, node_config, p["run"], p["dim"], p["floor"])
    except DataError:  # counted as no test sample (the update's reply said why, this round)
        correct, samples = 0, 0
    return {"correct": correct, "samples": samples}, {}


def _scores(setup, node_config, p: dict, delta: dict) -> tuple[dict, dict]:
    """Take the round's model update, then count the merged samples' scores under it
    (nothing counted when the update started from a version this node does not hold)."""
    from clients.site_task import keep_model, kept_score_counts

    held = keep_model(setup, node_config, p["run"], delta, p["names"], p["base"], p["version"], p["dim"], None,
                      p["floor"])
    if held != p["version"]:
        return {"version": held}, {}
    counts = kept_score_counts(setup, node_config, p["run"], p["accepted"], p["dim"])
    return {"version": held}, {"counts": counts}


OPS = {"offer": _offer, "keep": _keep, "counts": _counts, "scores": _scores}


def call(record: dict, node_config, op: str, params: dict, arrays: dict | None = None) -> tuple[dict, dict]:
    """Run ``op`` for the node holding the setup ``record``: by its worker in a SuperNode's
    message process, else here. A site's data error comes back as :class:`DataError`."""
    if worker.wanted(node_config):
        return worker.ask(node_config, {"op": op, "setup": record, "params": params}, arrays or {}, {})
    from clients.node import setup_from

    return OPS[op](setup_from(record, node_config), node_config, params, arrays or {})


def serve(header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """The worker's side of :func:`call`."""
    from clients.node import setup_from

    setup = setup_from(header["setup"], header["node_config"])
    return OPS[header["op"]](setup, header["node_config"], header["params"], arrays)
