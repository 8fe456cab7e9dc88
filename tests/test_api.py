"""The Python API: fedrecon.run, fedrecon.export and fedrecon.load_model, imported lazily;
the core's one exception to its import contract is fedrecon.api's call of the server."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import fedrecon
from fedrecon.scenario import ScenarioError
from tests.conftest import REPO
from tests.test_layers import PACKAGES, lint, loaded_after

QUICKSTART = REPO / "scenarios" / "omniglot-quickstart.yaml"


def test_import_fedrecon_loads_neither_torch_nor_flower_and_load_model_no_flower():
    assert loaded_after("import fedrecon") == set()
    assert loaded_after("import fedrecon; fedrecon.load_model; fedrecon.Model") == set()
    assert {"run", "export", "load_model"} <= set(dir(fedrecon))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fedrecon.nothing  # noqa: B018


def test_the_core_may_call_the_server_only_through_fedrecon_api(tmp_path):
    # Prepare: a copy whose model code imports the server, and whose api imports more of it
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    model = tmp_path / "fedrecon" / "model" / "model.py"
    model.write_text("import server.api  # noqa\n" + model.read_text())
    api = tmp_path / "fedrecon" / "api.py"
    api.write_text("import server.run  # noqa\n" + api.read_text())
    # Execute
    proc = lint(tmp_path)
    # Assert
    assert "The core imports no Flower and none of the apps BROKEN" in proc.stdout
    assert "fedrecon.model.model -> server.api" in proc.stdout
    assert "fedrecon.api -> server.run" in proc.stdout


def test_run_passes_overrides_as_fedrecon_run_does_and_returns_the_folders_result(monkeypatch, tmp_path):
    import server.cli

    seen = {}

    def fake_run(args):  # what cmd_run leaves in a run folder, without Flower
        seen.update(scenario=args.scenario, set=args.set)
        out = tmp_path / "run"
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({"final_accuracy": 0.5}))
        (out / "metrics.jsonl").write_text('{"round": 1, "accuracy": 0.5}\n')
        return 0

    monkeypatch.setattr(server.cli, "cmd_run", fake_run)
    result = fedrecon.run(QUICKSTART, overrides={"merge.head": "lda", "tasks.num_classes": 20, "model.checkpoint": None},
                          out=tmp_path / "run")
    assert seen == {"scenario": str(QUICKSTART), "set": ['merge.head="lda"', "tasks.num_classes=20", "model.checkpoint=null"]}
    assert result.summary == {"final_accuracy": 0.5} and result.rows == [{"round": 1, "accuracy": 0.5}]
    assert result.folder == tmp_path / "run"


def test_run_refuses_a_bad_override_before_any_run():
    with pytest.raises(ScenarioError, match="merge.hed"):
        fedrecon.run(QUICKSTART, overrides={"merge.hed": "lda"})


@pytest.mark.e2e
def test_the_readme_in_python_run_export_predict(tmp_path):
    # the README's "Use the model" in Python, on a quickstart of 20 classes (one round)
    result = fedrecon.run(QUICKSTART, overrides={"tasks.num_classes": 20, "model.device": "cpu"}, out=tmp_path / "run")
    manifest = fedrecon.export(result.folder, tmp_path / "model")
    model = fedrecon.load_model(tmp_path / "model")
    assert manifest["accuracy"] == result.summary["final_accuracy"] == result.rows[-1]["accuracy"]
    drawings = np.zeros((2, 1, 28, 28), np.float32)
    drawings[:, :, 10:18, 12:16] = 1.0  # two strokes, as the dataset holds drawings (ink = 1)
    predictions = model.predict(drawings, top=3)
    assert [len(p["top"]) for p in predictions] == [3, 3] and predictions[0]["top"][0]["label"] in model.names
    # a block of ink is no character: above the threshold the run chose, unknown
    assert predictions[0]["label"] == "unknown" and predictions[0]["unknown_score"] > model.threshold
