"""Every wrong scenario in tests/bad_scenarios/ gets exactly one error line that names
its file, line and key; the first line of each file says which line and what text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedrecon.scenario import ScenarioError, load_scenario
from server.prepare import check

BAD = sorted((Path(__file__).parent / "bad_scenarios").glob("*.yaml"))
HEADER = re.compile(r"^# (?:line (\d+)|error): (.+)$")


def test_corpus_is_large_and_distinct():
    assert len(BAD) >= 30
    texts = [p.read_text().split("\n", 1)[1] for p in BAD]
    assert len(set(texts)) == len(texts)


def errors_of(path: Path) -> list[str]:
    """What ``fedrecon validate`` says of the file: the schema, the data, the plug-ins and the plan."""
    try:
        check(load_scenario(path))
    except ScenarioError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_scenario_has_one_clear_error(path: Path):
    line, expected = HEADER.match(path.read_text().splitlines()[0]).groups()
    problems = errors_of(path)
    assert len(problems) == 1, problems
    (problem,) = problems
    assert expected in problem
    assert problem.startswith(f"{path}:{line}:" if line else f"{path}:"), problem
    assert re.match(rf"{re.escape(str(path))}:\d+(:\d+)?: ", problem) or "not valid YAML" in problem


def test_all_errors_of_a_file_at_once(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text("name: x\nclients:\n  count: 0\n  joins: 2\ntasks:\n  num_classes: -1\n  classes_per_task: 2\n"
                    "  train_shots: 1\n  test_shots: 1\n  arrival: {kind: poisson, rate: 0}\n")
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    lines = exc.value.problems
    assert [ln.split(": ")[0] for ln in lines] == [f"{path}:3:3", f"{path}:4:3", f"{path}:6:3", f"{path}:10:28"]
    assert "did you mean 'join'?" in lines[1]


def test_a_plugin_policy_is_refused_by_the_lines_a_builtin_is(tmp_path, monkeypatch):
    # Prepare: a policy that averages (no sums_only), under secure aggregation
    (tmp_path / "averaging.py").write_text("class Mean:\n    def merge(self, current, updates):\n        return current\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "s.yaml"
    path.write_text("name: t\nclients: {count: 3}\ntasks: {num_classes: 12, classes_per_task: 2, train_shots: 4, "
                    "test_shots: 2}\nmerge: {prototypes: 'averaging:Mean'}\nprivacy: {secure_aggregation: true}\n")
    scenario = load_scenario(path)  # its members are not known before it is imported
    # Execute
    with pytest.raises(ScenarioError) as err:
        check(scenario)
    # Assert
    assert err.value.problems == [f"{path}:5:11: privacy.secure_aggregation: merge.prototypes averaging:Mean does not "
                                  "say it needs only a round's sum (sums_only = True): the server would learn only the "
                                  "round's sum; use exact"]


SMALL = "name: t\nclients: {count: 3}\ntasks: {num_classes: 12, classes_per_task: 2, train_shots: 4, test_shots: 2}\n"


def test_a_wrong_root_and_a_wrong_checkpoint_are_one_report(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SMALL + "data: {root: ..}\nmodel: {checkpoint: ../checkpoints/conv4.pt}\n")
    assert errors_of(path) == [
        f"{path}:4:8: data.root: no Omniglot evaluation set under {tmp_path.parent}: expected "
        f"{tmp_path.parent}/omniglot/images_evaluation.npz (and alphabets.csv), or the official PNG layout "
        "<Alphabet>/characterNN/*.png",
        f"{path}:5:9: model.checkpoint: no checkpoint file {tmp_path.parent}/checkpoints/conv4.pt (no folder "
        f"{tmp_path.parent}/checkpoints); a relative path is taken from the scenario file's folder; train one with: "
        f"fedrecon pretrain --out {tmp_path.parent}/checkpoints/conv4.pt"]


def test_a_data_root_left_out_is_fedrecon_data_else_from_the_working_folder(tmp_path, monkeypatch):
    # Prepare: a scenario outside the repository, without data.root
    from tests.conftest import DATA_ROOT

    path = tmp_path / "elsewhere" / "s.yaml"
    path.parent.mkdir()
    path.write_text(SMALL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDRECON_DATA", raising=False)
    # Execute, Assert: ../shared/data from the working folder, named with the rule
    assert errors_of(path) == [
        f"{path}:1:1: data.root: no Omniglot evaluation set under {tmp_path.parent}/shared/data: expected "
        f"{tmp_path.parent}/shared/data/omniglot/images_evaluation.npz (and alphabets.csv), or the official PNG layout "
        f"<Alphabet>/characterNN/*.png; {tmp_path.parent}/shared/data does not exist "
        "(data.root left out is $FEDRECON_DATA, else ../shared/data from the working folder)"]
    monkeypatch.setenv("FEDRECON_DATA", str(DATA_ROOT))
    assert errors_of(path) == []
    assert load_scenario(path).data.root == str(DATA_ROOT.resolve())


def test_validate_refuses_the_devices_a_run_refuses(monkeypatch, capsys):
    # Prepare: a machine without CUDA
    import torch

    from server.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    demo = str(Path(__file__).parents[1] / "scenarios" / "omniglot-quickstart.yaml")
    # Execute, Assert
    assert main(["validate", demo, "--set", "model.device=cuda"]) == 1
    assert capsys.readouterr().err == ("--set model.device=cuda: model.device: 'cuda', but torch sees no CUDA GPU on this "
                                       "machine: use auto or cpu\n")
    assert main(["validate", demo, "--set", "simulation.num_gpus=0.5"]) == 1
    assert capsys.readouterr().err.startswith("--set simulation.num_gpus=0.5: simulation.num_gpus: 0.5 GPUs per client, "
                                              "but torch sees no CUDA GPU")


def test_a_typo_in_a_path_gets_the_path_meant(tmp_path):
    from fedrecon.paths import missing_checkpoint

    (tmp_path / "checkpoints").mkdir()
    for name in ("conv4-omniglot.pt", "conv4-omniglot.log", "conv4-omniglot.json"):
        (tmp_path / "checkpoints" / name).write_text("")
    # a typo in the file's name: the file of the same kind, no advice to train one
    assert missing_checkpoint(tmp_path / "checkpoints" / "conv4-omniglt.pt") == (
        f"no checkpoint file {tmp_path}/checkpoints/conv4-omniglt.pt; did you mean {tmp_path}/checkpoints/conv4-omniglot.pt?")
    # a typo in a folder's name, and nothing near: train one
    assert missing_checkpoint(tmp_path / "checkpoint" / "conv4-omniglot.pt").endswith(
        f"(no folder {tmp_path}/checkpoint); did you mean {tmp_path}/checkpoints/conv4-omniglot.pt?")
    assert missing_checkpoint(tmp_path / "mine.pt").endswith(f"train one with: fedrecon pretrain --out {tmp_path}/mine.pt")
