"""End to end on Flower with adapters: clients train LoRA, the server merges and checkpoints it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.cli import main as fedrecon
from tests.conftest import small_scenario

pytestmark = pytest.mark.e2e


def test_ffa_adapters_with_drift_compensation_run_and_checkpoint(write_scenario, tmp_path):
    # Prepare: 3 clients, 2 rounds of 2 classes each; ffa merges B, compensate moves old prototypes
    base = small_scenario()
    scenario = {**base, "tasks": {**base["tasks"], "num_classes": 12},
                "merge": {"prototypes": "exact", "adapters": "ffa"},
                "adapters": {"schedule": "every_task", "rank": 2, "lr": 1e-4, "lr_later": 1e-5, "epochs": 1,
                             "batch_size": 10, "staleness": "compensate", "drift_sigma": 3.0}}
    path = write_scenario(scenario)
    out = tmp_path / "run"
    # Execute
    assert fedrecon(["run", str(path), "--out", str(out)]) == 0
    # Assert
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["adapters"] == "every_task/ffa"
    assert summary["classes_learned"] == 12 and summary["final_accuracy"] > 0.6
    with np.load(out / "checkpoint.npz") as z:
        factors = [k for k in z.files if k.startswith("model/")]
        meta = json.loads(z["meta"].tobytes().decode())
        assert len(factors) == 4 and all(k.endswith(".B") for k in factors)  # conv4: 4 convs, only B is global
        assert np.abs(z[factors[0]]).max() > 0
    assert meta["server"]["adapter_version"] == summary["rounds"]
    # adapters travel as factors: once the backbone is delivered (round 1), a round's
    # traffic stays far below conv4's weights (~450 KB)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["bytes_down"] + rows[1]["bytes_up"] < 100_000


def test_clients_score_under_the_merged_adapter_as_the_server_does(write_scenario, tmp_path):
    """evaluation.where: clients under ffa: each client embeds its test share under the
    merged adapter, and the counts add up to the server's own accuracy, round by round."""
    base = small_scenario()
    accuracies = {}
    for where in ("server", "clients"):
        scenario = {**base, "tasks": {**base["tasks"], "num_classes": 12},
                    "merge": {"prototypes": "exact", "adapters": "ffa"},
                    "adapters": {"schedule": "every_task", "rank": 2, "lr": 1e-3, "epochs": 1, "batch_size": 10},
                    "evaluation": {"where": where}}
        out = tmp_path / where
        assert fedrecon(["run", str(write_scenario(scenario, f"{where}.yaml")), "--out", str(out)]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        accuracies[where] = [r["accuracy"] for r in rows]
    assert accuracies["clients"] == pytest.approx(accuracies["server"], abs=1e-12)
    assert all(a is not None and a > 0.5 for a in accuracies["clients"])


def _stats_under_final_adapter(path, out):
    """The run's training samples summarised at one site under its final merged adapter."""
    import copy

    import torch

    from fedrecon.learning.adapter_task import start_factors
    from fedrecon.learning.lora import Adapted
    from fedrecon.learning.stats import ClassStats
    from fedrecon.learning.training import embed_adapted
    from fedrecon.scenario import load_scenario
    from server.checkpoint import load_run_state
    from server.prepare import prepare

    prep = prepare(load_scenario(path))
    adapted = Adapted(copy.deepcopy(prep.model), prep.entry, prep.scenario.adapters)
    _, stats, state = load_run_state(out)
    adapted.load(start_factors(adapted, prep.scenario, state["model_arrays"], 0, 99))
    index = np.concatenate([a.sample_index for a in prep.plan.arrivals])
    labels = np.concatenate([a.sample_labels for a in prep.plan.arrivals])
    feats = embed_adapted(adapted.model, prep.dataset.inputs[index], torch.device("cpu"))
    return stats, ClassStats.from_features(labels, feats)


def test_adapter_steps_make_a_synchronous_rounds_statistics_those_of_the_merged_adapter(write_scenario, tmp_path):
    """Three clients adapt together in round 1 (first_task, ffa). With adapters.steps the
    merged statistics equal one site's statistics of all training samples under the final
    adapter; without, each client's statistics stay under its own adapter and differ."""
    base = small_scenario()
    gaps = {}
    for steps in (0, 2):
        scenario = {**base, "merge": {"prototypes": "exact", "adapters": "ffa"},
                    "adapters": {"schedule": "first_task", "rank": 2, "lr": 1e-3, "epochs": 1, "batch_size": 10,
                                 "steps": steps}}
        path = write_scenario(scenario, f"steps{steps}.yaml")
        out = tmp_path / f"steps{steps}"
        assert fedrecon(["run", str(path), "--out", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["failures"] == 0 and summary["classes_learned"] == 12
        merged, central = _stats_under_final_adapter(path, out)
        np.testing.assert_array_equal(merged.ids, central.ids)
        gaps[steps] = np.abs(merged.sums - central.sums).max() / np.abs(central.sums).max()
        if steps:
            meta = json.loads(np.load(out / "checkpoint.npz")["meta"].tobytes().decode())
            log = meta["server"]["adapter_log"]
            # two adapter steps in round 1 with three trainers; in round 2 no one trains
            # (first_task, every client past its first task): the server sends no step
            assert [(e["round"], e["trainers"]) for e in log] == [(1, 3), (1, 3)]
    assert gaps[2] < 1e-5
    assert gaps[0] > 1e-3


def test_features_both_through_flower_keep_the_merged_statistics_exact(write_scenario, tmp_path):
    """adapters.features both with two federated adapter steps (classifier federation):
    the clients summarise frozen and adapted features side by side (128-d on conv4), the
    second step's negatives are the adapted half, and the merged statistics equal one
    site's statistics of all training samples under the final adapter."""
    base = small_scenario()
    scenario = {**base, "merge": {"prototypes": "exact", "adapters": "ffa"},
                "adapters": {"schedule": "first_task", "rank": 2, "lr": 1e-3, "epochs": 1, "batch_size": 10,
                             "steps": 2, "classifier": "federation", "features": "both"}}
    path = write_scenario(scenario)
    out = tmp_path / "both"
    assert fedrecon(["run", str(path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["classes_learned"] == 12 and summary["final_accuracy"] > 0.6
    merged, central = _stats_under_final_adapter(path, out)
    assert merged.dim == 128
    np.testing.assert_array_equal(merged.ids, central.ids)
    assert np.abs(merged.sums - central.sums).max() / np.abs(central.sums).max() < 1e-5
