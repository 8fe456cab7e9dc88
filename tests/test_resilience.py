"""On Flower's simulation engine: faults, client-side evaluation, and a run killed and resumed
all end where an undisturbed run of the same scenario ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from server.cli import QUIET_FLOWER, main as fedrecon
from tests.conftest import REPO, small_scenario

pytestmark = pytest.mark.e2e

# 12 classes, one a task, 3 clients: 4 rounds.
TASKS = {**small_scenario()["tasks"], "classes_per_task": 1}
# Round timeout; a "timeout" fault stalls 2 s longer. Generous, so that honest replies on a
# loaded 2-core machine are never late.
TIMEOUT = 25.0


def scenario(faults: dict | None = None, **overrides) -> dict:
    return small_scenario(tasks=TASKS, faults={"reply_timeout": TIMEOUT, **(faults or {})}, **overrides)


def read_run(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    with np.load(out / "stats.npz") as npz:
        stats = {k: npz[k] for k in npz.files}
    return {"summary": json.loads((out / "summary.json").read_text()), "rows": rows, "stats": stats}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The undisturbed run, evaluated on the server."""
    folder = tmp_path_factory.mktemp("reference")
    path = folder / "scenario.yaml"
    path.write_text(json.dumps(scenario()))
    assert fedrecon(["run", str(path), "--out", str(folder / "run")]) == 0
    return read_run(folder / "run")


def same_model(run: dict, reference: dict) -> None:
    np.testing.assert_array_equal(run["stats"]["ids"], reference["stats"]["ids"])
    np.testing.assert_array_equal(run["stats"]["counts"], reference["stats"]["counts"])
    np.testing.assert_allclose(run["stats"]["sums"], reference["stats"]["sums"], rtol=1e-12)
    for key in ("classes_seen", "classes_learned", "final_accuracy"):
        assert run["summary"][key] == reference["summary"][key], key


def test_clients_evaluating_their_shares_give_the_servers_accuracy(reference, write_scenario, tmp_path):
    path = write_scenario(scenario(evaluation={"where": "clients"}))
    assert fedrecon(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    run = read_run(tmp_path / "run")
    same_model(run, reference)
    assert [r["accuracy"] for r in run["rows"]] == [r["accuracy"] for r in reference["rows"]]
    assert run["summary"]["evaluation"] == "clients"


def test_raising_stalling_and_lying_clients_lose_no_class(reference, write_scenario, tmp_path):
    faults = {"retries": 2, "inject": [{"client": 0, "round": 2, "kind": "raise"},
                                       {"client": 1, "round": 3, "kind": "timeout"},
                                       {"client": 2, "round": 4, "kind": "garbage"}]}
    path = write_scenario(scenario(faults=faults))
    assert fedrecon(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    run = read_run(tmp_path / "run")
    same_model(run, reference)
    s = run["summary"]
    assert (s["failures"], s["retries"], s["lost_tasks"]) == (3, 3, 0)
    # Client 2's garbage came in the last round: one more round offered its task again.
    assert s["rounds"] == reference["summary"]["rounds"] + 1


def test_a_run_killed_after_a_round_and_resumed_ends_like_the_undisturbed_one(reference, write_scenario, tmp_path):
    path = write_scenario(scenario())
    out = tmp_path / "run"
    env = {**os.environ, **QUIET_FLOWER}
    # Its own session: SIGKILL goes to this run's process group (Ray's processes too) and nothing else.
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "run", str(path), "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
            if len(rows) >= 2 and (out / "checkpoint.npz").exists():
                break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_after = len((out / "metrics.jsonl").read_text().splitlines())
    assert 2 <= killed_after < 4 and not (out / "summary.json").exists()

    assert fedrecon(["run", "--resume", str(out)]) == 0
    run = read_run(out)
    same_model(run, reference)
    ignore = {"wall_seconds", "bytes_down", "bytes_down_resent"}
    assert {k: v for k, v in run["summary"].items() if k not in ignore} == \
           {k: v for k, v in reference["summary"].items() if k not in ignore}
    # The only extra traffic: the backbone again to the fresh clients of the new run.
    s = run["summary"]
    assert s["bytes_down"] - s["bytes_down_resent"] == reference["summary"]["bytes_down"]
    assert [r["accuracy"] for r in run["rows"]] == [r["accuracy"] for r in reference["rows"]]
