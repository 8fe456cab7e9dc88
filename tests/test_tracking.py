"""Experiment tracking: a run logged to MLflow and TensorBoard, read back through their own
readers; a resumed run continues the same tracked run; a tracker not installed is one line."""

from __future__ import annotations

import json

import pytest

from fedrecon.scenario import ScenarioError, load_scenario
from server.prepare import check
from tests.conftest import small_scenario
from tests.test_run import STAGGERED, run
from tests.test_strategy import identity  # noqa: F401 (fixture)

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def tracked(write_scenario, tmp_path):
    return write_scenario(small_scenario(tasks=STAGGERED, tracking={"mlflow": str(tmp_path / "mlflow"),
                                                                   "experiment": "tests",
                                                                   "tensorboard": str(tmp_path / "tb")}))


def mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    (found,) = client.search_runs([experiment.experiment_id])
    return client, found


def tensorboard_scalars(folder, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder)).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_a_run_is_logged_to_mlflow_and_tensorboard(write_scenario, tmp_path):
    # Execute
    summary = run(tracked(write_scenario, tmp_path), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Assert: one MLflow run with the scenario as parameters, a metric a round, the summary, the run folder's files
    client, found = mlflow_run(tmp_path)
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    params = found.data.params
    assert params["merge.prototypes"] == "exact" and params["clients.count"] == "3" and params["tasks.arrival.kind"] == "staggered"
    history = client.get_metric_history(found.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], r["accuracy"]) for r in rows]
    assert found.data.metrics["summary.final_accuracy"] == summary["final_accuracy"]
    assert found.data.tags["backbone"] == "conv4"
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"summary.json", "metrics.jsonl", "accuracy.png", "scenario.json", "plan.json"} <= files
    assert "checkpoint.npz" not in files
    # and the same rounds in TensorBoard's event files
    scalars = tensorboard_scalars(tmp_path / "tb" / "run", "accuracy")
    assert [s for s, _ in scalars] == [r["round"] for r in rows]
    assert [v for _, v in scalars] == pytest.approx([r["accuracy"] for r in rows], abs=1e-6)  # float32 events


def test_a_resumed_run_continues_the_same_tracked_run(write_scenario, tmp_path):
    path = tracked(write_scenario, tmp_path)
    assert run(path, tmp_path / "run", stop_before=3) is None
    run(path, tmp_path / "run", resume=True)
    client, found = mlflow_run(tmp_path)  # one run, not two
    history = client.get_metric_history(found.info.run_id, "accuracy")
    assert [m.step for m in history] == [1, 2, 3, 4] and found.info.status == "FINISHED"
    assert [s for s, _ in tensorboard_scalars(tmp_path / "tb" / "run", "accuracy")] == [1, 2, 3, 4]


def test_a_tracker_that_is_not_installed_is_one_line(write_scenario, tmp_path, monkeypatch):
    import importlib.util

    path = tracked(write_scenario, tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ScenarioError) as err:
        check(load_scenario(path))
    (line,) = err.value.problems
    assert "tracking.mlflow: mlflow is not installed: pip install 'fedrecon[mlflow]'" in line and line.startswith(str(path))
