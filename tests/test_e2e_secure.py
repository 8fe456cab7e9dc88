"""Secure aggregation end to end on Flower's simulation engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.cli import main as fedrecon
from tests.conftest import small_scenario
from tests.test_run import run
from tests.test_strategy import identity  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def test_a_secure_run_with_a_client_dropping_mid_aggregation_ends_as_the_plain_run(write_scenario, tmp_path):
    # Prepare: the plain run's ending (in-process: the same ClientApp), then the secure run on Flower
    plain = write_scenario(small_scenario(), "plain.yaml")
    reference = run(plain, tmp_path / "plain")
    faults = {"retries": 2, "inject": [{"client": 1, "round": 1, "kind": "drop_mid_aggregation"}]}
    path = write_scenario(small_scenario(privacy={"secure_aggregation": True}, faults=faults))
    # Execute
    assert fedrecon(["run", str(path), "--out", str(tmp_path / "secure")]) == 0
    # Assert: every class learned, no task lost, the plain run's statistics and accuracy
    summary = json.loads((tmp_path / "secure" / "summary.json").read_text())
    assert summary["classes_learned"] == 12 and summary["lost_tasks"] == 0 and summary["failures"] == 1
    assert summary["final_accuracy"] == reference["final_accuracy"]
    secure, straight = np.load(tmp_path / "secure" / "stats.npz"), np.load(tmp_path / "plain" / "stats.npz")
    np.testing.assert_array_equal(secure["ids"], straight["ids"])
    np.testing.assert_array_equal(secure["counts"], straight["counts"])
    np.testing.assert_allclose(secure["sums"], straight["sums"], rtol=1e-9)
