"""fedrecon export --format onnx: one graph that onnxruntime runs alone labels every test
input as torch does (conv4 with each head, an adapted conv4, MiniLM), with scores and
unknown scores within float32's rounding, rejects the same inputs above a threshold, and
is refused in one line when altered or incomplete, like the safetensors folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from fedrecon.model import ModelError, load_model
from fedrecon.model.onnx_export import write_onnx
from fedrecon.scenario import load_scenario
from server.cli import main
from server.prepare import prepare
from tests.conftest import DATA_ROOT, small_scenario
from tests.test_model_export import exported, one_line_error, runs  # noqa: F401 (fixtures)
from tests.test_run import ADAPTERS, run
from tests.test_strategy import identity  # noqa: F401 (fixture: messages need a run id)

pytest.importorskip("onnxruntime")


def inputs_of(run_dir) -> np.ndarray:
    """The run's test samples of every class seen, as its dataset holds them."""
    prep = prepare(load_scenario(run_dir / "scenario.json"))
    index, _ = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
    return prep.dataset.inputs[index]


def assert_same(torch_model, onnx_model, inputs) -> None:
    """onnxruntime's labels are torch's on every input; scores and unknown scores close."""
    mine, theirs = onnx_model.runtime.outputs(inputs), torch_model.runtime.outputs(inputs)
    scores, unknown = np.abs(mine.scores - theirs.scores).max(), np.abs(mine.unknown - theirs.unknown).max()
    scale = max(1.0, np.abs(theirs.scores).max())
    differ = np.flatnonzero(mine.best != theirs.best)
    assert not len(differ), f"{len(differ)} of {len(inputs)} labels differ (max score difference {scores:.3g})"
    assert scores <= 1e-5 * scale, f"max abs score difference {scores:.3g} (scores up to {scale:.3g})"
    assert unknown <= 1e-5 * max(1.0, np.abs(theirs.unknown).max()), f"max abs unknown score difference {unknown:.3g}"
    assert np.array_equal(onnx_model.class_ids(inputs), torch_model.class_ids(inputs))


@pytest.fixture(scope="module")
def onnx_exported(runs, exported, tmp_path_factory):  # noqa: F811
    """Each kind's ONNX folder: lda's from the run by the CLI, ridge's by fedrecon.export, ncm's
    converted from the safetensors folder."""
    import fedrecon

    models = {kind: tmp_path_factory.mktemp(f"{kind}-onnx") / "model" for kind in ("ncm", "lda", "ridge")}
    assert main(["export", str(runs["lda"]), "--out", str(models["lda"]), "--format", "onnx"]) == 0
    assert fedrecon.export(runs["ridge"], models["ridge"], format="onnx")["model_format"] == "onnx"
    write_onnx(load_model(exported["ncm"]), models["ncm"])
    return models


@pytest.mark.parametrize("kind", ["ncm", "lda", "ridge"])
def test_onnxruntime_labels_every_test_drawing_as_torch(kind, runs, exported, onnx_exported):  # noqa: F811
    model = load_model(onnx_exported[kind])
    assert_same(load_model(exported[kind]), model, inputs_of(runs[kind]))
    # Assert: the manifest is the safetensors folder's, plus the graph's description
    manifest, theirs = model.manifest, load_model(exported[kind]).manifest
    assert sorted(manifest["files"]) == ["model.onnx"] and manifest["model_format"] == "onnx"
    for key in ("classes", "head", "unknown", "backbone", "preprocessing", "scenario", "round", "accuracy"):
        assert manifest[key] == theirs[key], key
    assert manifest["onnx"]["inputs"] == {"images": {"dtype": "float32", "shape": ["batch", 1, 28, 28]}}
    assert model.head is None and model.unknown is None


def test_the_same_inputs_are_rejected_above_the_threshold(runs, exported, onnx_exported, tmp_path, capsys):  # noqa: F811
    inputs = inputs_of(runs["lda"])
    threshold = float(np.median(load_model(exported["lda"]).runtime.outputs(inputs).unknown))
    assert main(["export", str(runs["lda"]), "--out", str(tmp_path / "m"), "--format", "onnx",
                 f"--unknown-threshold={threshold}"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(onnx)")
    onnx, torch_model = load_model(tmp_path / "m"), load_model(exported["lda"])
    assert onnx.threshold == threshold
    mine, theirs = onnx.predict(inputs), torch_model.predict(inputs, unknown_threshold=threshold)
    assert [p["label"] for p in mine] == [p["label"] for p in theirs]
    assert 0 < sum(p["label"] == "unknown" for p in mine) < len(mine)
    assert [p["class_id"] for p in mine] == [p["class_id"] for p in theirs]


@pytest.mark.parametrize("damage", ["altered", "missing", "extra"])
def test_an_onnx_folder_altered_or_incomplete_is_refused_in_one_line(damage, onnx_exported, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(onnx_exported["ncm"], model)
    if damage == "altered":
        blob = bytearray((model / "model.onnx").read_bytes())
        blob[len(blob) // 2] ^= 1
        (model / "model.onnx").write_bytes(bytes(blob))
    elif damage == "missing":
        (model / "model.onnx").unlink()
    else:
        (model / "model.onnx.data").write_bytes(b"\0")
    err = one_line_error(["predict", str(model), str(tmp_path)], capsys)
    expected = {"altered": "model.onnx: altered", "missing": "model.onnx is missing",
                "extra": "model.onnx.data is not in the manifest"}[damage]
    assert expected in err
    with pytest.raises(ModelError):
        load_model(model)


def test_without_onnxruntime_loading_says_how_to_install_it(onnx_exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ModelError, match=r"pip install 'fedrecon\[onnx\]'"):
        load_model(onnx_exported["ncm"])


def test_an_adapted_backbone_both_features_labels_as_torch(tmp_path):
    # Prepare: clients train adapters (merged exactly); features are the frozen and adapted side by side
    adapters = {"schedule": "every_task", **ADAPTERS, "features": "both"}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(small_scenario(merge={"prototypes": "exact", "adapters": "stack"}, adapters=adapters)))
    run(path, tmp_path / "run")
    # Execute
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    torch_model = load_model(tmp_path / "model")
    write_onnx(torch_model, tmp_path / "onnx")
    # Assert
    assert_same(torch_model, load_model(tmp_path / "onnx"), inputs_of(tmp_path / "run"))
    assert load_model(tmp_path / "onnx").manifest["backbone"]["adapter"]["features"] == "both"


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    """Two clients learn a CLINC150 domain each on MiniLM (lda head: relative Mahalanobis); both formats."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # before the autouse identity, as runs does
    root = tmp_path_factory.mktemp("text")
    scenario = {"name": "text", "seed": 0, "data": {"dataset": "clinc150", "root": str(DATA_ROOT)},
                "model": {"backbone": "all-minilm-l6-v2", "device": "cpu"}, "clients": {"count": 2},
                "tasks": {"train_shots": 10, "test_shots": 3, "split": {"kind": "group", "groups": 2}},
                "merge": {"prototypes": "exact", "head": "lda"}}
    (root / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    run(root / "scenario.yaml", root / "run")
    assert main(["export", str(root / "run"), "--out", str(root / "model")]) == 0
    write_onnx(load_model(root / "model"), root / "onnx")
    return root


def test_onnxruntime_labels_every_test_sentence_as_torch(text_models, capsys):
    sentences = [str(t) for t in inputs_of(text_models / "run")]
    onnx = load_model(text_models / "onnx")
    assert_same(load_model(text_models / "model"), onnx, np.array(sentences, dtype=object))
    assert sorted(onnx.manifest["files"]) == ["model.onnx", "tokenizer.json"]
    assert (text_models / "onnx" / "tokenizer.json").read_text() == (text_models / "model" / "tokenizer.json").read_text()
    capsys.readouterr()
    outputs = []
    for folder in ("model", "onnx"):  # the CLI, unchanged, on either format
        assert main(["predict", str(text_models / folder), *sentences[:5], "--json"]) == 0
        outputs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    assert [p["label"] for p in outputs[0]] == [p["label"] for p in outputs[1]]


# docs/model.md's recipe: onnxruntime, tokenizers and numpy alone, torch unimportable
ALONE = """
import json, sys
sys.modules["torch"] = None
import numpy as np, onnxruntime
from tokenizers import Tokenizer
folder, sentences = sys.argv[1], json.loads(sys.argv[2])
manifest = json.load(open(f"{folder}/manifest.json"))
tokenizer = Tokenizer.from_file(f"{folder}/tokenizer.json")
encoded = tokenizer.encode_batch(sentences)
feeds = {"input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
         "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64)}
session = onnxruntime.InferenceSession(f"{folder}/model.onnx")
scores, label, unknown = session.run(["scores", "label", "unknown_score"], feeds)
threshold = manifest["unknown"]["threshold"]
print(json.dumps([manifest["classes"][i]["name"] if threshold is None or u <= threshold else "unknown"
                  for i, u in zip(label, unknown)]))
import fedrecon
print(json.dumps([p["label"] for p in fedrecon.load_model(folder).predict(sentences)]))
"""


def test_the_onnx_folder_runs_on_onnxruntime_alone_as_docs_model_md_says(text_models):
    sentences = [str(t) for t in inputs_of(text_models / "run")][:8]
    out = subprocess.run([sys.executable, "-c", ALONE, str(text_models / "onnx"), json.dumps(sentences)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    expected = [p["label"] for p in load_model(text_models / "model").predict(sentences)]
    assert [json.loads(line) for line in out] == [expected, expected]
