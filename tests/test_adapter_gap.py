"""The domain-gap scenario's kind of adapter (scenarios/omniglot-efficientnet-adapters.yaml):
EfficientNet-Lite0 with LoRA on every conv, the depthwise ones too, trained in round 1's
adapter steps and then frozen. The merged statistics equal one site's statistics of every
training sample under the final adapter, on the in-process grid (the real ClientApp)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrecon.scenario import load_scenario
from server.prepare import prepare
from server.run import Run
from tests.conftest import REPO, small_scenario
from tests.inprocess import InProcessGrid
from tests.test_e2e_adapters import _stats_under_final_adapter
from tests.test_strategy import identity  # noqa: F401 (fixture)


def test_shipped_scenario_adapts_every_conv_once_and_freezes():
    s = load_scenario(REPO / "scenarios" / "omniglot-efficientnet-adapters.yaml")
    assert (s.model.backbone, s.merge.head, s.merge.adapters) == ("efficientnet-lite0", "ridge", "ffa")
    assert s.adapters.schedule == "first_task" and s.adapters.steps >= 1 and s.adapters.targets == ["_conv"]
    assert s.adapters.features == "both"


def gap_scenario(**adapters) -> dict:
    """3 clients, 12 classes at 32 px on EfficientNet-Lite0, every conv adapted in round 1, then frozen."""
    base = small_scenario()
    return {**base, "data": {**base["data"], "image_size": 32},
            "model": {"backbone": "efficientnet-lite0", "checkpoint": None, "device": "cpu"},
            "tasks": {**base["tasks"], "train_shots": 3, "test_shots": 2},
            "merge": {"prototypes": "exact", "adapters": "ffa", "head": "ncm"},
            "adapters": {"schedule": "first_task", "targets": ["_conv"], "rank": 2, "lr": 3e-3, "epochs": 1,
                         "batch_size": 8, **adapters}}


def test_every_conv_adapted_in_round_1_keeps_the_statistics_exact(write_scenario, tmp_path):
    # Prepare: one adapter step in round 1
    path = write_scenario(gap_scenario(steps=1))
    prep = prepare(load_scenario(path))
    # Execute
    job = Run(InProcessGrid(prep.plan.clients), prep, tmp_path / "run", echo=lambda *a: None, poll_interval=0)
    job.start()
    summary = job.run()
    # Assert: the adapter moved the depthwise convs as well, and the statistics are one site's
    merged, central = _stats_under_final_adapter(path, tmp_path / "run")
    assert summary["failures"] == 0 and summary["classes_learned"] == 12
    np.testing.assert_array_equal(merged.ids, central.ids)
    np.testing.assert_array_equal(merged.counts, central.counts)
    assert np.abs(merged.sums - central.sums).max() / np.abs(central.sums).max() < 1e-5
    with np.load(tmp_path / "run" / "checkpoint.npz") as z:
        moved = [k for k in z.files if k.startswith("model/") and "_depthwise_conv" in k and np.abs(z[k]).max() > 0]
    assert moved


@pytest.mark.parametrize("features", ["adapted", "both"])
def test_a_federation_wide_classifier_sends_the_known_classes_and_stays_exact(write_scenario, tmp_path, features):
    # Prepare: two adapter steps whose loss separates every class the federation knows;
    # under features both the statistics are 2 x 1280 wide, the classifier's classes the adapted half
    path = write_scenario(gap_scenario(steps=2, classifier="federation", features=features))
    prep = prepare(load_scenario(path))
    grid = InProcessGrid(prep.plan.clients)
    # Execute
    job = Run(grid, prep, tmp_path / "run", echo=lambda *a: None, poll_interval=0)
    job.start()
    summary = job.run()
    # Assert: round 1's first step knows no class; its second, the classes all three trainers
    # sent means of; round 2's step starts from the merged statistics
    steps = [m for m in grid.sent if m.metadata.message_type.endswith(".adapt")]
    labels = lambda m: set(m.content["task_arrays"]["sample_labels"].numpy().tolist())  # noqa: E731
    known = lambda m: m.content["task_arrays"]["known_ids"].numpy().tolist()  # noqa: E731
    assert [int(m.content["task_config"]["round"]) for m in steps] == [1, 1, 1, 1, 1, 1, 2, 2, 2]
    assert not any("known_ids" in m.content["task_arrays"] for m in steps[:3])
    round_1 = sorted(set().union(*(labels(m) for m in steps[:3])))
    assert all(known(m) == round_1 for m in steps[3:6])
    assert known(steps[6]) == round_1 and steps[6].content["task_arrays"]["known_sums"].numpy().shape == (6, 1280)
    merged, central = _stats_under_final_adapter(path, tmp_path / "run")
    assert summary["failures"] == 0 and summary["classes_learned"] == 12
    assert merged.dim == (2560 if features == "both" else 1280)
    assert np.abs(merged.sums - central.sums).max() / np.abs(central.sums).max() < 1e-5
    if features == "both":  # round 2's negatives: exactly the adapted half of the merged sums
        sent = steps[6].content["task_arrays"]["known_sums"].numpy()
        rows = np.searchsorted(merged.ids, known(steps[6]))
        np.testing.assert_allclose(sent, merged.sums[rows, 1280:], rtol=1e-12)
