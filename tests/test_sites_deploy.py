"""Real sites on Flower's deployment engine, loopback only: a SuperLink and three SuperNodes,
each started with a site folder of its own (node config ``site-folder``), as
docs/deployment.md deploys them on three machines.

One plain run of four rounds carries three events: site 1's SuperNode is killed (with
every process it started, as a crash ends it) the moment its first offer is on its disk,
and started again; a new alphabet's characters are put into site 2 once round 2 is done
(learned in round 3 or 4); then the run ends. Its merged statistics are compared, class
by class, with one site's holding every folder (``merge.prototypes: centralized``) and
with an undisturbed three-site run, both in process (tests/inprocess.py) on the folders
as they ended; sites 0 and 1 must name the new characters. A secure run on the same
SuperNodes (``sites.classes``, the vocabulary) must end with the same statistics and
accuracy. tests/test_sites.py checks the same round by round without Flower's engine.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedrecon.data.omniglot_sites import write_sites
from fedrecon.model.model import load_model
from server.checkpoint import load_run_state
from server.deploy import LocalDeployment
from tests.conftest import CHECKPOINT, DATA_ROOT

pytestmark = pytest.mark.e2e

SITES = 3
CLASSES = 3  # characters a site holds at the start
LATER = 2  # characters put into site 2 mid-run
KILLED = 1  # the site whose SuperNode is killed


def small_sites(out: Path) -> Path:
    """Three site folders of 3 characters (5 drawings to learn, 3 to test) and ``later`` with 2."""
    write_sites(DATA_ROOT, out, sites=SITES, alphabets=1, later=1, train=5, test=3)
    for folder in [*out.glob("site-*"), out / "later"]:
        keep = sorted(p.name for p in (folder / "train").iterdir())[: LATER if folder.name == "later" else CLASSES]
        for part in ("train", "test"):
            for cls in (folder / part).iterdir():
                if cls.name not in keep:
                    shutil.rmtree(cls)
    return out


def site_scenario(path: Path, folders: list[Path] | None = None, rounds: int = 4, **extra) -> Path:
    """The scenario as the doc's: no folders (each SuperNode names its own), or ``folders``."""
    raw = {
        "name": "sites-deployed", "seed": 0,
        "model": {"backbone": "conv4", "checkpoint": str(CHECKPOINT), "device": "cpu"},
        "clients": {"count": SITES},
        "sites": {"folders": [str(f) for f in folders or []], "read": "ink", "image_size": 28},
        "rounds": rounds,
        "merge": {"prototypes": "exact", "head": "ncm"},
        "evaluation": {"where": "clients"},
        # a killed node's task is given up after this (Flower itself says so after about 50 s)
        "faults": {"reply_timeout": 30},
        # no unknown-input threshold: an exchange less a round (three less under secure aggregation)
        "unknown": {"quantile": None},
    }
    for key, value in extra.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def by_name(run_dir: Path) -> dict[str, tuple[float, np.ndarray]]:
    """A run folder's merged statistics (stats.npz) keyed by class name (the checkpoint's ``sites.names``)."""
    _, _, state = load_run_state(run_dir)
    names = state["server"]["sites"]["names"]
    with np.load(run_dir / "stats.npz") as npz:
        ids, counts, sums = npz["ids"], npz["counts"], npz["sums"]
    return {names[int(c)]: (float(counts[i]), sums[i]) for i, c in enumerate(ids) if counts[i] > 0}


def in_process(scenario: Path, out: Path) -> dict[str, tuple[float, np.ndarray]]:
    """Run a site scenario on in-process nodes (no Flower engine); its statistics by name."""
    from flwr.supercore.task_identity import TaskIdentity

    from tests.test_sites import Rounds

    # messages built outside a Flower app need an identity (tests/test_strategy.py's fixture does the same)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    run = Rounds(scenario, out)
    run.all()
    return {name: (float(c), s) for name, (c, s) in run.by_name().items()}


def same_stats(a: dict, b: dict) -> None:
    """Equal class by class, bit for bit: a class lives at one site and is learned in one
    task there, so its sum adds the same features in the same order (the sample order of
    a site's listing) whatever site, round or process learns it."""
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name][0] == b[name][0], name
        np.testing.assert_array_equal(a[name][1], b[name][1], err_msg=name)


def offered(site: Path) -> bool:
    """Whether the site's node has an offer on its disk that the server has not settled."""
    for ledger in (site / ".fedrecon").glob("ledger-*.json"):
        try:
            if json.loads(ledger.read_text())["offered"]:
                return True
        except (OSError, ValueError, KeyError):
            pass
    return False


def rows(run_dir: Path) -> list[dict]:
    metrics = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []


def move_in(src: Path, site: Path, staging: Path) -> list[str]:
    """Put ``src``'s characters into ``site`` a whole folder at a time (copied beside it,
    then renamed in), so that a round never reads half a character; test parts first."""
    names = sorted(p.name for p in (src / "train").iterdir())
    for part in ("test", "train"):
        for name in names:
            shutil.copytree(src / part / name, staging / part / name)
            os.rename(staging / part / name, site / part / name)
    return names


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sites-deploy")
    data = small_sites(tmp / "sites")
    folders = [data / f"site-{k}" for k in range(SITES)]
    later_names = sorted(p.name for p in (data / "later" / "train").iterdir())
    out: dict = {"tmp": tmp, "folders": folders, "later": later_names}
    deployment = LocalDeployment(tmp / "deploy", SITES,
                                 node_configs={k: {"site-folder": str(folders[k])} for k in range(SITES)})
    with deployment:
        run_dir = tmp / "run-plain"
        run_id = deployment.submit({"scenario": str(site_scenario(tmp / "plain.yaml")), "out": str(run_dir)})
        deadline = time.monotonic() + 420
        while not (run_dir / "summary.json").exists() and time.monotonic() < deadline:
            if "killed_in" not in out and offered(folders[KILLED]):
                # its offer is saved and its reply may or may not have left: a crash now
                deployment.kill(f"supernode{KILLED}")
                out["killed_in"] = len(rows(run_dir)) + 1
                deployment.start_supernode(KILLED, name=f"supernode{KILLED}-again")
            if "copied_after" not in out and len(rows(run_dir)) >= 2:
                (tmp / "staging" / "train").mkdir(parents=True)
                (tmp / "staging" / "test").mkdir(parents=True)
                move_in(data / "later", folders[2], tmp / "staging")
                out["copied_after"] = len(rows(run_dir))
            time.sleep(0.02)
        status = deployment.wait(run_id, 60)
        assert status == "finished:completed", deployment.log(run_id)
        out["plain"] = by_name(run_dir)
        out["summary"] = json.loads((run_dir / "summary.json").read_text())
        out["rows"] = rows(run_dir)
        # the models the nodes keep, read before the secure run replaces them
        out["models"] = {k: load_model(folders[k] / ".fedrecon" / "model") for k in range(SITES)}
        drawings = sorted((folders[2] / "test" / later_names[0]).iterdir())
        out["predicted"] = {k: [p["label"] for p in out["models"][k].predict([str(d) for d in drawings])]
                            for k in (0, 1)}
        # secure aggregation on the same SuperNodes and folders (a new run: a new ledger a node)
        vocabulary = sorted(out["plain"])
        secure_dir = tmp / "run-secure"
        run_id = deployment.submit({"scenario": str(site_scenario(
            tmp / "secure.yaml", rounds=1, privacy={"secure_aggregation": True}, sites={"classes": vocabulary})),
            "out": str(secure_dir)})
        status = deployment.wait(run_id, 300)
        assert status == "finished:completed", deployment.log(run_id)
        out["secure"] = by_name(secure_dir)
        out["secure_summary"] = json.loads((secure_dir / "summary.json").read_text())
    # in process, on the folders as they ended (copied: their .fedrecon folders stay as the nodes left them)
    final = tmp / "final"
    shutil.copytree(data, final, ignore=shutil.ignore_patterns(".fedrecon*", "later"))
    finals = [final / f"site-{k}" for k in range(SITES)]
    out["centralized"] = in_process(site_scenario(tmp / "one.yaml", finals, rounds=1,
                                                  merge={"prototypes": "centralized"}), tmp / "run-one")
    out["undisturbed"] = in_process(site_scenario(tmp / "three.yaml", finals, rounds=1), tmp / "run-three")
    yield out


def test_three_deployed_sites_merge_what_one_site_holding_every_folder_learns(deployed):
    plain = deployed["plain"]
    assert len(plain) == SITES * CLASSES + LATER
    same_stats(plain, deployed["centralized"])
    assert deployed["summary"]["final_accuracy"] > 0.5


def test_a_class_added_to_site_2_mid_run_reaches_the_models_of_sites_0_and_1(deployed):
    later, rows = deployed["later"], deployed["rows"]
    assert deployed["copied_after"] == 2 and len(rows) == 4
    assert rows[1]["classes_learned"] == SITES * CLASSES and rows[3]["classes_learned"] == SITES * CLASSES + LATER
    for k in (0, 1):
        model = deployed["models"][k]
        assert set(later) <= set(model.names) and model.manifest["round"] == 4
        assert deployed["predicted"][k].count(later[0]) >= 2, deployed["predicted"][k]  # of 3 test drawings


def test_a_supernode_killed_with_its_offer_on_disk_learns_nothing_twice_and_loses_nothing(deployed):
    assert deployed["killed_in"] == 1
    same_stats(deployed["plain"], deployed["undisturbed"])
    assert deployed["summary"]["lost_tasks"] == 0


def test_secure_deployed_sites_end_as_the_plain_run(deployed):
    plain, secure = deployed["plain"], deployed["secure"]
    assert deployed["secure_summary"]["secure_aggregation"] and sorted(secure) == sorted(plain)
    for name, (count, sums) in plain.items():
        assert secure[name][0] == count, name
        # the secure sum is fixed point (2^-40 a value): equal to that, not bit for bit
        np.testing.assert_allclose(secure[name][1], sums, rtol=0, atol=1e-9, err_msg=name)
    assert deployed["secure_summary"]["final_accuracy"] == deployed["summary"]["final_accuracy"]
