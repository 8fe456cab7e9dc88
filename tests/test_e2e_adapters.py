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
        factors = [k for k in z.files if k.startswith("adapter/")]
        meta = json.loads(z["meta"].tobytes().decode())
        assert len(factors) == 4 and all(k.endswith(".B") for k in factors)  # conv4: 4 convs, only B is global
        assert np.abs(z[factors[0]]).max() > 0
    assert meta["strategy"]["adapter_version"] == summary["rounds"]
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
