"""Sites with data of their own, run round by round on in-process nodes (tests/inprocess.py):
exact against one site holding every folder, data that arrives mid-run, lost replies and
restarted nodes learning nothing twice, secure aggregation, bad site data, the kept model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import yaml

from fedrecon.learning.stats import ClassStats
from fedrecon.model.model import load_model
from fedrecon.scenario import load_scenario
from server.prepare import prepare
from server.run import Run
from tests.conftest import CHECKPOINT
from tests.inprocess import InProcessGrid
from tests.test_strategy import identity  # noqa: F401 (fixture: messages built outside a Flower app)

from tests.conftest import SITE_CLASSES as CLASSES  # a site's classes (of its alphabet's first characters)


def copy_sites(site_folders: Path, to: Path) -> Path:
    shutil.copytree(site_folders, to, ignore=shutil.ignore_patterns(".fedrecon*"))
    return to


def scenario(folder: Path, tmp: Path, rounds: int = 3, **extra) -> Path:
    raw = {
        "name": "sites", "seed": 0,
        "model": {"backbone": "conv4", "checkpoint": str(CHECKPOINT), "device": "cpu"},
        "clients": {"count": 3},
        "sites": {"folders": [str(folder / f"site-{k}") for k in range(3)], "read": "ink", "image_size": 28},
        "rounds": rounds,
        "merge": {"prototypes": "exact", "head": "ncm"},
        "evaluation": {"where": "clients"},
    }
    for key, value in extra.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    path = tmp / f"{len(list(tmp.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class Rounds:
    """A run driven round by round; ``drop(message)`` loses a reply, as in tests/inprocess.py."""

    def __init__(self, path: Path, out: Path, drop=None):
        self.prep = prepare(load_scenario(path))
        self.grid = InProcessGrid(self.prep.plan.clients, drop)
        self.run = Run(self.grid, self.prep, out, echo=lambda *a: None, poll_interval=0)
        self.run.start()

    def round(self, n: int) -> None:
        self.run.round(n)

    def all(self) -> dict:
        return self.run.run()

    @property
    def state(self):
        return self.run.state

    def by_name(self) -> dict[str, tuple]:
        """The merged statistics, class by class, keyed by name."""
        stats, names = self.state.stats, self.state.sites.names
        return {names[int(c)]: (stats.counts[i], stats.sums[i]) for i, c in enumerate(stats.ids)}


def same_stats(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name][0] == b[name][0], name
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)


def test_three_sites_merge_exactly_what_one_site_holding_every_folder_learns(site_folders, tmp_path):
    plain = Rounds(scenario(copy_sites(site_folders, tmp_path / "a"), tmp_path), tmp_path / "run-a")
    summary = plain.all()
    one = Rounds(scenario(copy_sites(site_folders, tmp_path / "b"), tmp_path, merge={"prototypes": "centralized"}),
                 tmp_path / "run-b")
    alone = one.all()
    # the unknown threshold too: the sites' binned training scores add up to the one site's
    assert plain.state.unknown[3]["threshold"] == one.state.unknown[3]["threshold"] is not None
    assert plain.state.unknown[3]["samples"] == 3 * CLASSES * 5 and plain.state.unknown[3]["complete"]
    node = load_model(tmp_path / "a" / "site-0" / ".fedrecon" / "model")
    assert node.threshold == plain.state.unknown[3]["threshold"] and node.manifest["unknown"]["chosen_by"] == "federation"
    assert len(plain.by_name()) == 3 * CLASSES and one.prep.plan.clients == 1
    # each class lives at one site: its sum is the same samples' features, added in the same order
    same_stats(plain.by_name(), one.by_name())
    assert summary["final_accuracy"] == alone["final_accuracy"] > 0.5
    rows = plain.run.recorder.rows  # (each evaluated round's bytes up include the threshold's counts)
    assert rows[0]["classes_learned"] == 15 and rows[1]["bytes_up"] < rows[0]["bytes_up"] / 4  # nothing new: no sums
    # no change: no rows, only the updates' few settings (to 3 sites, with the threshold's query and after it)
    assert rows[0]["bytes_model"] > 3 * CLASSES * 64 * 8 * 3 and rows[1]["bytes_model"] < 6 * 1024


def test_a_class_added_to_one_site_mid_run_reaches_every_sites_model(site_folders, tmp_path):
    folder = copy_sites(site_folders, tmp_path / "s")
    later = sorted(p.name for p in (folder / "later" / "train").iterdir())

    def copy_in_round_3(message) -> bool:  # while round 3's model updates go out: learned in round 4
        config = message.content["site_model_config"] if "site_model_config" in message.content else None
        if config is not None and int(config["round"]) == 3 and not (folder / "site-2" / "train" / later[0]).exists():
            for part in ("train", "test"):
                shutil.copytree(folder / "later" / part, folder / "site-2" / part, dirs_exist_ok=True)
        return False

    run = Rounds(scenario(folder, tmp_path, rounds=4), tmp_path / "run", copy_in_round_3)
    for n in (1, 2, 3):
        run.round(n)
    model = load_model(folder / "site-0" / ".fedrecon" / "model")
    assert not set(later) & set(model.names)
    run.round(4)
    for site in ("site-0", "site-1"):
        model = load_model(folder / site / ".fedrecon" / "model")
        assert set(later) <= set(model.names) and model.manifest["round"] == 4
        drawings = sorted((folder / "site-2" / "test" / later[0]).iterdir())
        labels = [p["label"] for p in model.predict([str(d) for d in drawings])]
        assert labels.count(later[0]) >= 2, labels  # 3 test drawings of the new character
    rows = run.run.recorder.rows
    assert rows[3]["classes_learned"] == 3 * CLASSES + len(later) and rows[2]["classes_learned"] == 3 * CLASSES


def test_lost_replies_and_a_restarted_node_learn_nothing_twice_and_lose_nothing(site_folders, tmp_path):
    plain = Rounds(scenario(copy_sites(site_folders, tmp_path / "a"), tmp_path), tmp_path / "run-a")
    plain.all()
    lost, grids = set(), []

    def lose_site_1s_first_reply(message) -> bool:  # the site learns and offers; its reply never arrives
        if "site_config" in message.content and message.metadata.dst_node_id == 101 and not lost:
            lost.add(1)
            grids[0]._answer(message)
            return True
        return False

    folder = copy_sites(site_folders, tmp_path / "b")
    run = Rounds(scenario(folder, tmp_path), tmp_path / "run-b", lose_site_1s_first_reply)
    grids.append(run.grid)
    run.round(1)
    assert lost and run.state.failures[0]["client"] == 1 and len(run.by_name()) == 2 * CLASSES
    offered = sorted((folder / "site-1" / ".fedrecon").glob("ledger-*.json"))
    assert offered and '"offered": {}' not in offered[0].read_text()  # the offer is on the node's disk
    # site 0's node restarts (a new process: its context is gone, its folder is not)
    from flwr.app import Context, RecordDict

    old = run.grid.contexts[100]
    run.grid.contexts[100] = Context(run_id=1, node_id=100, node_config=dict(old.node_config), state=RecordDict(),
                                     run_config={})
    run.round(2)
    run.round(3)
    same_stats(plain.by_name(), run.by_name())
    assert run.state.sites.accepted[1] and len(run.state.sites.accepted[0]) == 1  # site 0: one task, once


def test_secure_sites_end_as_the_plain_run(site_folders, tmp_path):
    folder = copy_sites(site_folders, tmp_path / "a")
    plain = Rounds(scenario(folder, tmp_path), tmp_path / "run-a")
    summary = plain.all()
    names = sorted(plain.by_name())
    secure = Rounds(scenario(copy_sites(site_folders, tmp_path / "b"), tmp_path, privacy={"secure_aggregation": True},
                             sites={"classes": names}), tmp_path / "run-b")
    secured = secure.all()
    assert secured["secure_aggregation"] and sorted(secure.by_name()) == names
    for name, (count, sums) in plain.by_name().items():
        other = secure.by_name()[name]
        assert other[0] == count
        np.testing.assert_allclose(other[1], sums, rtol=0, atol=1e-9)  # the sum's fixed point: 2^-40 a value
    assert secured["final_accuracy"] == summary["final_accuracy"]
    assert all(r["accuracy"] is not None for r in secure.run.recorder.rows)


def test_bad_site_data_fails_that_sites_task_only_and_it_is_learned_once_mended(site_folders, tmp_path):
    folder = copy_sites(site_folders, tmp_path / "a")
    first = sorted((folder / "site-1" / "train").iterdir())[0]
    (first / "notes.txt").write_text("not a drawing")
    run = Rounds(scenario(folder, tmp_path), tmp_path / "run")
    run.round(1)
    (failure,) = run.state.failures
    assert failure["client"] == 1 and "notes.txt" in failure["reason"] and "\n" not in failure["reason"]
    assert len(run.by_name()) == 2 * CLASSES  # the other sites went on
    (first / "notes.txt").unlink()
    run.round(2)
    assert len(run.by_name()) == 3 * CLASSES and all(c == 5 for c, _ in run.by_name().values())


def test_a_class_outside_the_vocabulary_is_refused_with_its_file(site_folders, tmp_path):
    folder = copy_sites(site_folders, tmp_path / "a")
    names = sorted(p.name for k in (0, 1) for p in (folder / f"site-{k}" / "train").iterdir())
    run = Rounds(scenario(folder, tmp_path, sites={"classes": names}), tmp_path / "run")
    run.round(1)
    failure, test_failure = run.state.failures  # its task, then its test part
    assert failure["client"] == 2 and "site-2" in failure["reason"] and "not one of" in failure["reason"]
    assert test_failure["client"] == 2 and test_failure["reason"].startswith("site test data: ")
    assert len(run.by_name()) == 2 * CLASSES


def test_the_node_keeps_the_servers_model(site_folders, tmp_path):
    folder = copy_sites(site_folders, tmp_path / "a")
    run = Rounds(scenario(folder, tmp_path, rounds=1), tmp_path / "run")
    run.all()
    model = load_model(folder / "site-1" / ".fedrecon" / "model")
    names = run.state.sites.names
    assert model.names == [names[int(c)] for c in run.state.stats.ids]
    kept = ClassStats.from_arrays(dict(np.load(folder / "site-1" / ".fedrecon" / "merged" / "stats.npz")))
    for key, value in run.state.stats.to_arrays().items():
        np.testing.assert_array_equal(kept.to_arrays()[key], value)
    # the server's export of the run is the same model, class names from the sites
    from server.model_export import export_run

    exported = load_model(export_run(tmp_path / "run", tmp_path / "exported") and tmp_path / "exported")
    drawings = [str(p) for p in sorted((folder / "site-0" / "test").rglob("*.png"))]
    assert exported.names == model.names
    assert [p["score"] for p in exported.predict(drawings)] == [p["score"] for p in model.predict(drawings)]


def test_a_site_with_bad_data_leaves_the_secure_sum_and_the_others_are_merged(site_folders, tmp_path):
    folder = copy_sites(site_folders, tmp_path / "a")
    names = sorted(p.name for k in range(3) for p in (folder / f"site-{k}" / "train").iterdir())
    first = sorted((folder / "site-1" / "train").iterdir())[0]
    (first / "broken.png").write_bytes(b"no png")
    run = Rounds(scenario(folder, tmp_path, privacy={"secure_aggregation": True}, sites={"classes": names}),
                 tmp_path / "run")
    run.round(1)
    (failure,) = [f for f in run.state.failures if f["client"] == 1]
    assert "broken.png" in failure["reason"] and "not a readable image" in failure["reason"]
    assert len(run.by_name()) == 2 * CLASSES
    (first / "broken.png").unlink()
    run.round(2)
    assert len(run.by_name()) == 3 * CLASSES and all(c == 5 for c, _ in run.by_name().values())


def test_a_resumed_site_run_keeps_its_token_and_learns_nothing_twice(site_folders, tmp_path):
    plain = Rounds(scenario(copy_sites(site_folders, tmp_path / "a"), tmp_path), tmp_path / "run-a")
    plain.all()
    folder = copy_sites(site_folders, tmp_path / "b")
    path = scenario(folder, tmp_path)
    first = Rounds(path, tmp_path / "run-b")
    first.round(1)  # and its checkpoint: then the server stops
    prep = prepare(load_scenario(tmp_path / "run-b" / "scenario.json"))
    again = Run(InProcessGrid(3), prep, tmp_path / "run-b", echo=lambda *a: None, poll_interval=0)
    again.resume()
    assert again.state.sites.run == first.state.sites.run and again.done == 1
    again.run()
    resumed = Rounds.__new__(Rounds)
    resumed.run = again
    same_stats(plain.by_name(), resumed.by_name())
    assert len(list((folder / "site-0" / ".fedrecon").glob("ledger-*.json"))) == 1



def test_a_supernodes_site_work_runs_in_its_worker_and_learns_the_same(site_folders, tmp_path, monkeypatch):
    """In deployment a site's operations run in the node's long-lived worker (clients/site_ops.py):
    the same statistics, model and counts as in the message's own process."""
    import os
    import subprocess

    from clients import worker

    plain = Rounds(scenario(copy_sites(site_folders, tmp_path / "a"), tmp_path, rounds=2), tmp_path / "run-a")
    plain.all()
    monkeypatch.setattr(worker, "wanted", lambda node_config: True)
    folder = copy_sites(site_folders, tmp_path / "b")
    run = Rounds(scenario(folder, tmp_path, rounds=2), tmp_path / "run-b")
    try:
        run.all()
        sockets = [worker.socket_path(c.node_config) for c in run.grid.contexts.values()]
        assert all(s.exists() for s in sockets)  # each node's worker served its site
    finally:
        for context in run.grid.contexts.values():
            path = worker.socket_path(context.node_config)
            for pid in subprocess.run(["pgrep", "-f", f"clients.worker {path}"], capture_output=True,
                                      text=True).stdout.split():
                os.kill(int(pid), 15)
    same_stats(plain.by_name(), run.by_name())
    assert [r["accuracy"] for r in run.run.recorder.rows] == [r["accuracy"] for r in plain.run.recorder.rows]
    assert load_model(folder / "site-1" / ".fedrecon" / "model").names == load_model(
        tmp_path / "a" / "site-1" / ".fedrecon" / "model").names
