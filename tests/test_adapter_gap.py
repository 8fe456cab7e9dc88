"""The domain-gap scenario's kind of adapter (scenarios/omniglot-efficientnet-adapters.yaml):
EfficientNet-Lite0 with LoRA on every conv, the depthwise ones too, trained in round 1's
adapter steps and then frozen. The merged statistics equal one site's statistics of every
training sample under the final adapter, on the in-process grid (the real ClientApp)."""

from __future__ import annotations

import numpy as np

from fedrecon.scenario import load_scenario
from server.checkpoint import load_run_state
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


def _run(write_scenario, tmp_path, scenario: dict):
    path = write_scenario(scenario)
    prep = prepare(load_scenario(path))
    grid = InProcessGrid(prep.plan.clients)
    job = Run(grid, prep, tmp_path / "run", echo=lambda *a: None, poll_interval=0)
    job.start()
    summary = job.run()
    steps = [m for m in grid.sent if m.metadata.message_type.endswith(".adapt")]
    return path, summary, steps


def _labels(message) -> set:
    return set(message.content["task_arrays"]["sample_labels"].numpy().tolist())


def _known(message) -> list:
    return message.content["task_arrays"]["known_ids"].numpy().tolist()


def test_a_federation_wide_classifier_sends_the_known_classes_and_stays_exact(write_scenario, tmp_path):
    # Prepare and execute: two adapter steps whose loss separates every class the federation
    # knows, frozen and adapted features side by side (statistics 2 x 1280 wide)
    path, summary, steps = _run(write_scenario, tmp_path, gap_scenario(steps=2, classifier="federation", features="both"))
    # Assert: round 1's first step knows no class; its second, the classes all three trainers
    # sent means of (adapted features: 1280 wide); in round 2 nobody trains, and no step goes out
    assert [int(m.content["task_config"]["round"]) for m in steps] == [1] * 6
    assert not any("known_ids" in m.content["task_arrays"] for m in steps[:3])
    round_1 = sorted(set().union(*(_labels(m) for m in steps[:3])))
    assert all(_known(m) == round_1 for m in steps[3:6])
    assert steps[3].content["task_arrays"]["known_sums"].numpy().shape == (6, 1280)
    merged, central = _stats_under_final_adapter(path, tmp_path / "run")
    assert summary["failures"] == 0 and summary["classes_learned"] == 12 and merged.dim == 2560
    assert np.abs(merged.sums - central.sums).max() / np.abs(central.sums).max() < 1e-5


def test_a_later_rounds_trainer_separates_the_adapted_half_of_the_merged_statistics(write_scenario, tmp_path):
    # Prepare and execute: staggered, so client 1's first task (round 2) trains after round 1
    # was merged; features both: the merged statistics are 2560 wide
    scenario = gap_scenario(steps=2, classifier="federation", features="both")
    scenario["tasks"] = {**scenario["tasks"], "arrival": {"kind": "staggered", "offset": 1}}
    _, summary, steps = _run(write_scenario, tmp_path, scenario)
    # Assert: round 2's first step carries the classes merged in round 1, as the adapted half
    # of their merged sums (those classes get no samples later: their sums are final)
    first = [m for m in steps if int(m.content["task_config"]["round"]) == 2][0]
    assert summary["failures"] == 0
    _, stats, _ = load_run_state(tmp_path / "run")
    rows = np.searchsorted(stats.ids, _known(first))
    assert stats.dim == 2560 and len(rows)
    np.testing.assert_allclose(first.content["task_arrays"]["known_sums"].numpy(), stats.sums[rows, 1280:], rtol=1e-12)
