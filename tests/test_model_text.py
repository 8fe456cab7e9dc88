"""fedrecon export and predict of a text model: the folder carries the run's tokenizer, and
labels sentences as the run's scoring did."""

from __future__ import annotations

import json

import yaml

from fedrecon.model import load_model
from fedrecon.scenario import load_scenario
from server.cli import main
from server.prepare import prepare
from tests.conftest import DATA_ROOT
from tests.test_run import run
from tests.test_strategy import identity  # noqa: F401 (fixture: messages need a run id)


def test_a_text_model_carries_its_tokenizer_and_labels_sentences_as_the_run_did(tmp_path, capsys):
    # Prepare: two clients learn a CLINC150 domain each on MiniLM; a cosine ncm head
    scenario = {"name": "text", "seed": 0, "data": {"dataset": "clinc150", "root": str(DATA_ROOT)},
                "model": {"backbone": "all-minilm-l6-v2", "device": "cpu"}, "clients": {"count": 2},
                "tasks": {"train_shots": 5, "test_shots": 3, "split": {"kind": "group", "groups": 2}},
                "merge": {"head": "ncm", "metric": "cosine"}}
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    summary = run(tmp_path / "scenario.yaml", tmp_path / "run")
    # Execute
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    capsys.readouterr()
    model = load_model(tmp_path / "model")
    prep = prepare(load_scenario(tmp_path / "run" / "scenario.json"))
    index, labels = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
    sentences = [str(t) for t in prep.dataset.inputs[index[:4]]]
    assert main(["predict", str(tmp_path / "model"), *sentences, "--json"]) == 0
    # Assert: the run's accuracy; the CLI's labels are the dataset's; the folder's tokenizer is the one used
    assert (model.class_ids(prep.dataset.inputs[index]) == labels).mean() == summary["final_accuracy"]
    printed = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    ids = list(model.head.ids)
    assert printed == [model.names[ids.index(c)] for c in model.class_ids(prep.dataset.inputs[index[:4]])]
    assert model.preprocessing == {"kind": "text", "tokenizer": "tokenizer.json"}
    assert model.encoder.modules[0].tokenizer.to_str() == (tmp_path / "model" / "tokenizer.json").read_text()
