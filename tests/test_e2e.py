"""End to end on Flower: the merged model equals the centralized one and knows every class."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedrecon.backbones.embed import embed
from fedrecon.learning.heads import NearestMean
from fedrecon.scenario import load_scenario
from fedrecon.learning.stats import ClassStats
from server.cli import QUIET_FLOWER, main as fedrecon
from server.prepare import prepare
from tests.conftest import REPO, small_scenario

pytestmark = pytest.mark.e2e


def centralized(scenario_path: Path) -> tuple[ClassStats, float]:
    """Statistics and accuracy of one site that holds all training samples."""
    prep = prepare(load_scenario(scenario_path))
    index = np.concatenate([a.sample_index for a in prep.plan.arrivals])
    labels = np.concatenate([a.sample_labels for a in prep.plan.arrivals])
    stats = ClassStats.from_features(labels, embed(prep.model, prep.dataset.inputs[index]))
    test_index, test_labels = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
    pred = NearestMean(stats).predict(embed(prep.model, prep.dataset.inputs[test_index]))
    return stats, float((pred == test_labels).mean())


def check_run_folder(out: Path, scenario_path: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (out / "accuracy.png").stat().st_size > 1000
    assert [r["round"] for r in rows] == list(range(1, summary["rounds"] + 1))
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in rows)

    stats, central_accuracy = centralized(scenario_path)
    merged = np.load(out / "stats.npz")
    # The union of all clients' classes, each with all its samples, as at one site.
    np.testing.assert_array_equal(merged["ids"], stats.ids)
    np.testing.assert_array_equal(merged["counts"], stats.counts)
    np.testing.assert_allclose(merged["sums"], stats.sums, rtol=1e-9)
    assert summary["classes_learned"] == summary["classes_seen"] == len(stats.ids)
    assert summary["final_accuracy"] == pytest.approx(central_accuracy, abs=1e-12)
    assert summary["final_accuracy"] > 0.8  # 12 unseen characters, conv4 embedding
    assert summary["failures"] == 0
    return summary


def test_fedrecon_run_on_simulation_engine(write_scenario, tmp_path):
    path = write_scenario(small_scenario(tasks={**small_scenario()["tasks"], "arrival": {"kind": "staggered", "offset": 1}}))
    out = tmp_path / "run"
    assert fedrecon(["run", str(path), "--out", str(out)]) == 0
    summary = check_run_folder(out, path)
    # 3 clients, 2 tasks each, client c starts in round 1 + c.
    assert summary["rounds"] == 4
    # Per-class results add up to the round's accuracy, and the report draws them.
    last = json.loads((out / "class_accuracy.jsonl").read_text().splitlines()[-1])
    assert sum(last["correct"]) / sum(last["total"]) == pytest.approx(summary["final_accuracy"], abs=1e-12)
    assert fedrecon(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "forgetting-run.png").stat().st_size > 1000
    assert (tmp_path / "report" / "clients-run.png").stat().st_size > 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flwr_run_with_scenario_in_run_config(write_scenario, tmp_path):
    """`flwr run .` against a SuperLink of our own, in simulation mode."""
    path = write_scenario(small_scenario())
    out = tmp_path / "run"
    home = tmp_path / "flwr-home"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "test"\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    bin_dir = Path(sys.executable).parent
    # The SuperLink starts flower-superexec and flwr-serverapp by name.
    env = {**os.environ, **QUIET_FLOWER, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    link = subprocess.Popen(
        [str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1", "--port", str(port),
         "--database", str(home / "state.db")],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        flwr = [str(bin_dir / "flwr")]
        run_config = f'scenario="{path}" out="{out}"'
        submitted = None
        for _ in range(30):  # the SuperLink takes a few seconds to listen
            proc = subprocess.run(flwr + ["run", ".", "test", "--format", "json", "--run-config", run_config,
                                          "--federation-config", "num-supernodes=3 client-resources-num-cpus=1"],
                                  env=env, cwd=REPO, capture_output=True, text=True)
            submitted = json.loads(proc.stdout)
            if submitted.get("success"):
                break
            time.sleep(1)
        assert submitted and submitted["success"], submitted
        run_id = submitted["run-id"]
        status = ""
        deadline = time.time() + 240
        while time.time() < deadline and not status.startswith("finished"):
            time.sleep(2)
            listed = subprocess.run(flwr + ["list", "test", "--run-id", str(run_id), "--format", "json"],
                                    env=env, cwd=REPO, capture_output=True, text=True)
            status = json.loads(listed.stdout)["runs"][0]["status"]
        assert status == "finished:completed", status
    finally:
        link.terminate()
        link.wait(timeout=30)
    check_run_folder(out, path)


def test_baselines_centralized_and_fedavg_finetune_run_in_the_same_harness(write_scenario, tmp_path):
    """``centralized``: one site, the same statistics and accuracy as the exact merge.
    ``fedavg_finetune``: the whole model travels each way with every task."""
    tasks = {**small_scenario()["tasks"], "arrival": {"kind": "staggered", "offset": 1}}
    path = write_scenario(small_scenario(tasks=tasks, merge={"prototypes": "centralized"}))
    out = tmp_path / "central"
    assert fedrecon(["run", str(path), "--out", str(out)]) == 0
    check_run_folder(out, path)  # statistics and accuracy of one site holding every sample
    assert json.loads((out / "plan.json").read_text())["clients"] == 1

    path = write_scenario(small_scenario(tasks=tasks, merge={"method": "fedavg_finetune"},
                                         finetune={"lr": 1e-3, "epochs": 2}), "finetune.yaml")
    out = tmp_path / "finetune"
    assert fedrecon(["run", str(path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["merge"] == "fedavg_finetune" and summary["failures"] == 0
    assert summary["classes_learned"] == summary["classes_seen"] == 12
    model_bytes = 111_936 * 4  # conv4's parameters alone, float32
    assert all(r["bytes_down"] > model_bytes and r["bytes_up"] > model_bytes for r in rows)
    assert 0.0 <= summary["final_accuracy"] < 1.0
    last = json.loads((out / "class_accuracy.jsonl").read_text().splitlines()[-1])
    assert sum(last["correct"]) / sum(last["total"]) == pytest.approx(summary["final_accuracy"], abs=1e-12)
