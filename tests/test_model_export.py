"""fedrecon export and predict: a run's classifier out of its folder labels the test samples
exactly as the run's scoring did, for every head; a model folder altered or incomplete,
and input the model cannot read, are refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from flwr.supercore.task_identity import TaskIdentity

from fedrecon.learning.heads import HEADS, build_head
from fedrecon.learning.stats import ClassStats
from fedrecon.model import ModelError, load_model
from fedrecon.scenario import load_scenario
from server.cli import main
from server.prepare import prepare
from tests.conftest import DATA_ROOT, head_of, small_scenario
from tests.test_run import run
from tests.test_strategy import identity  # noqa: F401 (fixture: messages need a run id)

# each run's sections beside the small scenario's: a head each, and ncm on noisy statistics (DP)
RUNS = {"ncm": {}, "lda": {"merge": {"prototypes": "exact", "head": "lda"}},
        "ridge": {"merge": {"prototypes": "exact", "head": "ridge", "random_features": 300}},
        "dp": {"privacy": {"dp": {"epsilon": 8.0, "clip": 20.0}}}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One small run folder per kind of RUNS (3 clients, 12 classes, in process)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    folders = {}
    for kind, sections in RUNS.items():
        root = tmp_path_factory.mktemp(kind)
        (root / "scenario.yaml").write_text(yaml.safe_dump(small_scenario(**sections), sort_keys=False))
        run(root / "scenario.yaml", root / "run")
        folders[kind] = root / "run"
    return folders


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    models = {}
    for kind, folder in runs.items():
        models[kind] = tmp_path_factory.mktemp(f"{kind}-model") / "model"
        assert main(["export", str(folder), "--out", str(models[kind])]) == 0
    return models


def test_a_heads_exported_parameters_score_as_the_head_itself():
    rng = np.random.default_rng(0)
    labels, features = np.repeat(np.arange(5), 8), rng.normal(size=(40, 6))
    for name in HEADS:
        merge, seed = head_of(name, 3, random_features=50)
        head = build_head(ClassStats.from_features(labels, features, HEADS[name].spec(merge, seed)), merge, seed)
        arrays, settings = head.parameters()
        twin = HEADS[name].restore(arrays, json.loads(json.dumps(settings)))
        probe = rng.normal(size=(7, 6))
        assert np.array_equal(twin.scores(probe), head.scores(probe)), name


@pytest.mark.parametrize("kind", list(RUNS))
def test_export_then_predict_gives_the_runs_final_accuracy(kind, runs, exported):
    # Prepare: the test samples of every class seen, as the run's dataset holds them
    summary = json.loads((runs[kind] / "summary.json").read_text())
    scenario = load_scenario(runs[kind] / "scenario.json")
    prep = prepare(scenario)
    index, labels = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
    # Execute
    model = load_model(exported[kind])
    predicted = model.class_ids(prep.dataset.inputs[index])
    # Assert: exactly the run's accuracy, and the manifest says so
    assert (predicted == labels).mean() == summary["final_accuracy"]
    assert model.manifest["accuracy"] == summary["final_accuracy"]
    assert model.manifest["head"]["kind"] == scenario.merge.head and len(model.names) == summary["classes_learned"]
    assert model.names[0] == prep.dataset.class_names[int(model.head.ids[0])]


def test_predict_reads_drawings_from_png_files_as_the_run_read_them(runs, exported, tmp_path, capsys):
    from PIL import Image

    # Prepare: the raw drawings of a few test samples, as PNG files in a folder
    prep = prepare(load_scenario(runs["ncm"] / "scenario.json"))
    index, _ = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
    index = index[::7]
    with np.load(DATA_ROOT / "omniglot" / "images_evaluation.npz") as npz:
        drawings = npz["images"]
    for k, i in enumerate(index):
        Image.fromarray(drawings[i // drawings.shape[1], i % drawings.shape[1]]).save(tmp_path / f"{k:03d}.png")
    # Execute
    assert main(["predict", str(exported["ncm"]), str(tmp_path), "--json", "--top", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # Assert: in input order, the labels the dataset's own samples get
    model = load_model(exported["ncm"])
    expected = [model.names[list(model.head.ids).index(c)] for c in model.class_ids(prep.dataset.inputs[index])]
    assert [p["top"][0]["label"] for p in lines] == expected  # the label: unknown above the run's threshold
    assert [p["label"] for p in lines] == [("unknown" if p["unknown_score"] > model.threshold else e) for p, e in zip(lines, expected)]
    assert [p["input"] for p in lines] == [str(tmp_path / f"{k:03d}.png") for k in range(len(index))]
    assert all(len(p["top"]) == 2 for p in lines)


def one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("damage", ["altered", "missing", "extra", "manifest"])
def test_a_model_folder_altered_or_incomplete_is_refused_in_one_line(damage, exported, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(exported["lda"], model)
    if damage == "altered":
        blob = bytearray((model / "head.safetensors").read_bytes())
        blob[-3] ^= 1
        (model / "head.safetensors").write_bytes(bytes(blob))
    elif damage == "missing":
        (model / "backbone.safetensors").unlink()
    elif damage == "extra":
        (model / "notes.txt").write_text("hi")
    else:
        (model / "manifest.json").write_text((model / "manifest.json").read_text().replace("character", "kharacter", 1))
    err = one_line_error(["predict", str(model), str(tmp_path)], capsys)
    expected = {"altered": "head.safetensors: altered", "missing": "backbone.safetensors is missing",
                "extra": "notes.txt is not in the manifest", "manifest": "manifest.json: altered"}[damage]
    assert expected in err
    with pytest.raises(ModelError):
        load_model(model)


def test_input_an_image_model_cannot_read_is_refused_in_one_line(exported, tmp_path, capsys):
    (tmp_path / "fake.png").write_text("not an image")
    assert "fake.png: not a readable image" in one_line_error(["predict", str(exported["ncm"]), str(tmp_path / "fake.png")],
                                                              capsys)
    err = one_line_error(["predict", str(exported["ncm"]), "what is my balance"], capsys)
    assert "what is my balance: no such image file or folder (this model reads images)" in err


def metrics_row(run_dir, done: int) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(row for row in rows if row["round"] == done)


@pytest.mark.parametrize("kind", list(RUNS))
def test_export_of_an_earlier_round_is_that_rounds_classifier(kind, runs, tmp_path):
    # Prepare: the test samples of the classes seen after round 1 (of 2), and its line of metrics.jsonl
    prep = prepare(load_scenario(runs[kind] / "scenario.json"))
    seen = prep.plan.classes_seen(1)
    index, labels = prep.plan.test_set(seen)
    first = metrics_row(runs[kind], 1)
    # Execute: a default run (checkpoints.keep: auto) kept round 1
    assert main(["export", str(runs[kind]), "--out", str(tmp_path / "m"), "--round", "1"]) == 0
    model = load_model(tmp_path / "m")
    # Assert: round 1's classes only, scored as the run scored them in round 1
    assert model.manifest["round"] == 1 and model.manifest["classes_seen"] == first["classes_seen"] == len(seen)
    np.testing.assert_array_equal(model.head.ids, np.sort(seen))
    assert len(seen) < metrics_row(runs[kind], 2)["classes_seen"]
    assert (model.class_ids(prep.dataset.inputs[index]) == labels).mean() == first["accuracy"] == model.manifest["accuracy"]


def test_a_round_not_run_not_kept_damaged_or_missing_is_refused_in_one_line(runs, tmp_path, capsys):
    import shutil

    # Prepare: a copy of the ncm run, and a run that keeps its last round only
    folder = tmp_path / "ncm"
    shutil.copytree(runs["ncm"], folder)
    (tmp_path / "last.yaml").write_text(yaml.safe_dump(small_scenario(checkpoints={"keep": "last"})))
    run(tmp_path / "last.yaml", tmp_path / "last")

    def refused(run_dir, done: int) -> str:
        err = one_line_error(["export", str(run_dir), "--out", str(tmp_path / "m"), "--round", str(done)], capsys)
        assert not (tmp_path / "m").exists()
        return err

    # Execute and assert
    assert refused(folder, 3).endswith("round 3 was not run (the run's rounds: 1-2)\n")
    assert not (tmp_path / "last" / "rounds").exists()
    assert refused(tmp_path / "last", 1).endswith(
        "round 1 is not kept (checkpoints.keep is last; the folder holds only the last, 2); set checkpoints.keep: "
        "every in the scenario to keep every round\n")
    kept = folder / "rounds" / "round-001.npz"
    blob = bytearray(kept.read_bytes())
    blob[len(blob) // 2] ^= 1
    kept.write_bytes(bytes(blob))
    assert f"{kept}: not a whole checkpoint (BadZipFile: Bad CRC-32" in refused(folder, 1)
    kept.unlink()
    assert f"{kept}: missing (the run kept round 1's state there)" in refused(folder, 1)
    assert main(["export", str(folder), "--out", str(tmp_path / "m"), "--round", "2"]) == 0


def test_the_merged_adapter_is_folded_in_giving_the_features_the_run_scored(tmp_path):
    from server.checkpoint import load_run_state
    from server.run import assemble
    from server.scoring import Scoring
    from tests.test_run import ADAPTERS

    # Prepare: a run whose clients train adapters (merged exactly), scored beside the frozen features
    adapters = {"schedule": "every_task", **ADAPTERS, "features": "both"}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(small_scenario(merge={"prototypes": "exact", "adapters": "stack"}, adapters=adapters)))
    run(path, tmp_path / "run")
    # Execute
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    model = load_model(tmp_path / "model")
    # Assert: the server's scoring of the restored state, bit for bit
    prep = prepare(load_scenario(tmp_path / "run" / "scenario.json"))
    state, _ = assemble(prep)
    done, stats, saved = load_run_state(tmp_path / "run")
    state.restore(saved["server"], stats, saved.get("model_arrays"))
    scoring = Scoring(prep, state)
    accuracy, (seen, _, _) = scoring.score(done)
    features, labels = scoring.evaluator.features(seen)
    index, order = prep.plan.test_set(seen)
    mine = model.encoder.features(prep.dataset.inputs[index])
    assert np.array_equal(mine[np.argsort(order, kind="stable")], features[np.argsort(labels, kind="stable")])
    assert not np.array_equal(mine[:, :64], mine[:, 64:])  # the adapter changed the features
    assert (model.class_ids(prep.dataset.inputs[index]) == order).mean() == accuracy
    assert model.manifest["backbone"]["adapter"]["features"] == "both"
    # round 1's export folds round 1's adapter: round 1's accuracy, other weights than the last round's
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "first"), "--round", "1"]) == 0
    first = load_model(tmp_path / "first")
    index, order = prep.plan.test_set(prep.plan.classes_seen(1))
    assert (first.class_ids(prep.dataset.inputs[index]) == order).mean() == metrics_row(tmp_path / "run", 1)["accuracy"]
    assert first.manifest["files"]["adapter.safetensors"] != model.manifest["files"]["adapter.safetensors"]


def test_predict_takes_inputs_from_arguments_a_file_or_standard_input_alike(exported, tmp_path, capsys, monkeypatch):
    import io

    from PIL import Image

    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for k, path in enumerate(paths):
        drawing = np.ones((40, 40), bool)
        drawing[5:35, 10 + 10 * k:14 + 10 * k] = False  # a stroke of ink on white
        Image.fromarray(drawing).save(path)
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in paths) + "\n")
    assert main(["predict", str(exported["ncm"]), "--file", str(tmp_path / "list.txt"), "--json"]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{p}\n" for p in paths)))
    assert main(["predict", str(exported["ncm"]), "--json"]) == 0
    from_stdin = capsys.readouterr().out
    assert main(["predict", str(exported["ncm"]), "--json", str(paths[0]), "--top", "3", str(paths[1])]) == 0
    options_among_inputs = capsys.readouterr().out
    assert from_file == from_stdin == options_among_inputs
    assert [json.loads(line)["input"] for line in from_file.splitlines()] == [str(p) for p in paths]


@pytest.mark.parametrize("head", ["ncm", "lda"])
def test_the_unknown_score_is_the_centralized_one_and_ranks_unlearned_classes_higher(head, runs, exported):
    from fedrecon.backbones.embed import embed
    from fedrecon.learning.heads import head_spec
    from fedrecon.model.unknown import UnknownScore, unknown_parameters

    # Prepare: the score one site would compute from all the training samples
    scenario = load_scenario(runs[head] / "scenario.json")
    prep = prepare(scenario)
    train = np.concatenate([np.concatenate(a.samples) for a in prep.plan.arrivals])
    central = ClassStats.from_features(prep.dataset.labels[train], embed(prep.model, prep.dataset.inputs[train]),
                                       head_spec(scenario.merge, scenario.seed))
    one_site = UnknownScore(*unknown_parameters(central, build_head(central, scenario.merge, scenario.seed),
                                                scenario.merge.shrinkage))
    model = load_model(exported[head])
    index, _ = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
    unlearned = np.setdiff1d(np.arange(40), model.head.ids)
    others = np.concatenate([np.flatnonzero(prep.dataset.labels == c)[:5] for c in unlearned])
    # Execute
    known = model.unknown.scores(model.encoder.features(prep.dataset.inputs[index]))
    unknown = model.unknown.scores(model.encoder.features(prep.dataset.inputs[others]))
    # Assert: federated equals one site; an unlearned class's drawing is more often the more unknown
    assert model.unknown.kind == ("relative_mahalanobis" if head == "lda" else "cosine")
    np.testing.assert_allclose(one_site.scores(model.encoder.features(prep.dataset.inputs[others])), unknown, rtol=1e-9)
    assert (unknown[:, None] > known[None, :]).mean() > 0.8


def test_an_input_above_the_unknown_threshold_is_labelled_unknown(runs, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.ones((50, 50), bool)).save(tmp_path / "blank.png")  # no ink at all
    assert main(["export", str(runs["lda"]), "--out", str(tmp_path / "m"), "--unknown-threshold=-1e9"]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "blank.png"), "--json"]) == 0
    rejected = json.loads(capsys.readouterr().out)
    assert rejected["label"] == "unknown" and rejected["unknown_score"] > -1e9 and len(rejected["top"]) == 3
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "blank.png"), "--json", "--unknown-threshold", "1e300"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == rejected["top"][0]["label"]


def test_runs_without_a_head_on_merged_statistics_are_refused_in_one_line():
    from fedrecon.model.export import refusal
    from tests.conftest import scenario_of

    assert refusal(scenario_of()) is None
    assert "every client keeps its own head" in refusal(scenario_of(merge={"prototypes": "local"}))
    assert "fedavg_finetune" in refusal(scenario_of(merge={"method": "fedavg_finetune"}, finetune={"epochs": 1}))
