"""Scenario files: the gallery, the schema, overrides and the CLI's answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedrecon.plan import make_plan, timeline
from fedrecon.scenario import ScenarioError, key_table, load_scenario, parse_scenario, scenario_from_json, scenario_json
from server.cli import main

from tests.conftest import REPO
# text scenarios: tests/test_text.py; site scenarios (no plan, the sites' data is theirs) below
GALLERY = sorted(p for p in (REPO / "scenarios").glob("omniglot-*.yaml") if not p.stem.endswith("-sites"))
SITE_GALLERY = sorted((REPO / "scenarios").glob("*-sites.yaml"))
SMALL = """name: small
clients: {count: 3}
tasks: {num_classes: 12, classes_per_task: 2, train_shots: 5, test_shots: 5}
"""


@pytest.fixture(scope="module")
def omniglot(evaluation_set):
    """The real evaluation set: some errors and plans are only visible against the data."""
    return evaluation_set


def test_scenarios_folder_holds_yaml_only_and_the_gallery():
    assert {p.suffix for p in (REPO / "scenarios").iterdir()} == {".yaml"}
    names = {p.stem for p in GALLERY}
    assert {"omniglot-quickstart", "omniglot-fedrecon", "omniglot-alphabets", "omniglot-staggered", "omniglot-poisson",
            "omniglot-late-joiners", "omniglot-dirichlet-revisits"} <= names


@pytest.mark.parametrize("path", GALLERY, ids=[p.stem for p in GALLERY])
def test_gallery_scenario_is_valid_and_plans(path: Path, omniglot):
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../docs/scenario.schema.json"
    scenario = load_scenario(path)
    plan = make_plan(scenario, omniglot.class_indices(), omniglot.groups)
    assert plan.arrivals and not [w for w in plan.warnings if "never gets data" in w]
    assert len(plan.test_samples) <= 600 if "fedrecon" in path.stem else len(plan.test_samples) <= 200
    assert path.stem in timeline(plan, path.stem)


@pytest.mark.parametrize("path", SITE_GALLERY, ids=[p.stem for p in SITE_GALLERY])
def test_site_scenario_is_valid_without_its_folders(path: Path):
    """A site scenario is checked on the server without any site's data: its folders live on the nodes."""
    from server.prepare import check

    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=../docs/scenario.schema.json"
    scenario = load_scenario(path)
    prep = check(scenario)
    assert scenario.sites is not None and scenario.tasks is None
    assert prep.plan.rounds == scenario.rounds and not prep.plan.arrivals and prep.dim > 0


def test_committed_schema_is_the_commands_output(capsys):
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == (REPO / "docs" / "scenario.schema.json").read_text()


def test_docs_list_every_key(capsys):
    assert main(["schema", "--keys"]) == 0
    table = capsys.readouterr().out
    assert table == key_table()
    assert table in (REPO / "docs" / "scenarios.md").read_text()


def test_the_scenario_travels_as_its_json_and_reads_back_the_same(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SMALL.replace("test_shots: 5}", "test_shots: 5, arrival: {kind: staggered, offset: 2}}"))
    s = load_scenario(path, ["merge.head=lda", "adapters.schedule=first_task"])
    text = scenario_json(s)
    assert scenario_from_json(text).model_dump() == s.model_dump()
    # only what the file and the overrides set: the cross-checks read it back as they read the file
    assert "shrinkage" not in text and '"head":"lda"' in text
    (tmp_path / "scenario.json").write_text(text)
    assert load_scenario(tmp_path / "scenario.json").model_dump() == s.model_dump()


def test_one_meaning_per_name():
    # tasks.schedule was the old name of tasks.arrival: refused now, with the key it meant
    with pytest.raises(ScenarioError, match="tasks.schedule: unknown key"):
        parse_scenario(SMALL.replace("test_shots: 5}", "test_shots: 5, schedule: synchronous}"))
    with pytest.raises(ScenarioError, match="adapters.rounds: unknown key; allowed: .* steps"):
        parse_scenario(SMALL + "adapters: {schedule: first_task, rounds: 2}\n")


def test_overrides_are_typed_and_checked():
    s = parse_scenario(SMALL, "s.yaml", ["clients.count=4", "tasks.arrival.kind=poisson", "tasks.arrival.rate=[1, 1, 0.5, 0.5]",
                                         "clients.join=[1, 1, 2, 3]", "seed=7"])
    assert (s.clients.count, s.tasks.arrival.kind, s.tasks.arrival.rate, s.seed) == (4, "poisson", [1, 1, 0.5, 0.5], 7)
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(SMALL, "s.yaml", ["tasks.nmu_classes=3"])
    assert exc.value.problems == [
        "--set tasks.nmu_classes=3: tasks.nmu_classes: unknown key; did you mean 'num_classes'? "
        "allowed: arrival, classes_per_task, num_classes, revisits, split, test_shots, train_shots"]
    with pytest.raises(ScenarioError, match=r"--set clients.count=many: clients.count: Input should be a valid integer"):
        parse_scenario(SMALL, "s.yaml", ["clients.count=many"])
    with pytest.raises(ScenarioError, match="expected key.path=value"):
        parse_scenario(SMALL, "s.yaml", ["clients.count"])


def test_same_seed_same_plan_other_seed_other_plan(omniglot):
    s = parse_scenario(SMALL.replace("{count: 3}", "{count: 3, dropout: 0.3}"))
    plan = lambda sc: make_plan(sc, omniglot.class_indices(), omniglot.groups)  # noqa: E731
    assert plan(s) == plan(s)
    assert plan(s) != plan(s.model_copy(update={"seed": 1}))


def test_cli_validate_plan_and_errors(tmp_path, capsys):
    quick = str(REPO / "scenarios" / "omniglot-quickstart.yaml")
    assert main(["validate", quick]) == 0
    assert "ok (5 clients, 5 rounds, 25 arrivals)" in capsys.readouterr().out
    assert main(["plan", quick, "--set", "clients.count=2", "--set", "tasks.num_classes=8"]) == 0
    out = capsys.readouterr().out
    assert "2 clients, 1 rounds" in out and "total   4   4    8     8" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "clients": {"count": 2, "joinn": 2}, "tasks": {"num_classes": 4}}, sort_keys=False))
    assert main(["validate", quick, str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4:3: clients.joinn: unknown key; did you mean 'join'?" in err
    assert "Traceback" not in err
    assert main(["plan", str(bad)]) == 2


def test_a_resumed_scenario_goes_through_every_check_a_new_one_does(tmp_path, capsys):
    # Prepare: a run folder whose scenario.json was edited into one the checks refuse
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "scenario.json").write_text('{"name": "x", "clients": {"count": 2},\n'
                                          ' "tasks": {"num_classes": 4, "classes_per_task": 9, "train_shots": 2, "test_shots": 2}}')
    # Execute
    code = main(["run", "--resume", str(folder)])
    # Assert: the cross-check between keys, with the file's line, and no run started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"{folder / 'scenario.json'}:2:") and "9 is more than tasks.num_classes (4)" in err[0]
    assert not (folder / "metrics.jsonl").exists()


def test_the_demos_head_is_switched_from_the_command_line_and_a_key_the_file_sets_can_be_removed(capsys):
    demo = "scenarios/omniglot-quickstart.yaml"  # it writes metric: euclidean, ncm's default
    for head in ("lda", "ridge"):
        assert main(["validate", demo, "--set", f"merge.head={head}"]) == 0
    # a value the new head would ignore is refused, with the way to remove it
    assert main(["validate", demo, "--set", "merge.metric=cosine", "--set", "merge.head=lda"]) == 1
    assert "--unset merge.metric" in capsys.readouterr().err
    assert main(["validate", demo, "--set", "merge.metric=cosine", "--set", "merge.head=lda", "--unset", "merge.metric"]) == 0
    assert main(["validate", demo, "--unset", "merge.shrinkage"]) == 1
    assert "does not set merge.shrinkage" in capsys.readouterr().err
