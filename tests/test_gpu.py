"""GPU clients: several virtual clients sharing one GPU in simulation, SuperNodes pinned to a
GPU in deployment, adapters trained under bf16 autocast there. The tests marked ``gpu`` need
CUDA and are skipped without it; the others check, on any machine, what is decided before a
GPU is touched."""

from __future__ import annotations

import json

import pytest
import torch

from server.cli import main as fedrecon
from server.deploy import LocalDeployment
from tests.conftest import small_scenario

CUDA = torch.cuda.is_available()
ADAPTERS = {"merge": {"prototypes": "exact", "adapters": "ffa"},
            "adapters": {"schedule": "every_task", "rank": 2, "lr": 1e-4, "epochs": 1, "batch_size": 10}}


def task_lines(out) -> list[dict]:
    lines = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    return [m for m in lines if m.get("phase") == "tasks" and not m["error"]]


def gpu_scenario(**simulation) -> dict:
    base = small_scenario()
    return {**base, **ADAPTERS, "model": {**base["model"], "device": "auto"},
            "simulation": simulation, "faults": {"reply_timeout": 300}}


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without a GPU")
def test_a_gpu_share_without_a_gpu_is_refused_before_the_run(write_scenario, tmp_path, capsys):
    path = write_scenario(gpu_scenario(num_gpus=0.5))
    assert fedrecon(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "simulation.num_gpus" in err and "no CUDA GPU" in err and str(path) in err
    assert not (tmp_path / "run").exists()


def test_supernodes_are_pinned_to_gpus_in_turn(tmp_path):
    d = LocalDeployment(tmp_path, clients=4, gpus=("0", "1"))
    assert [d.node_env(k) for k in range(4)] == [{"CUDA_VISIBLE_DEVICES": g} for g in "0101"]
    assert LocalDeployment(tmp_path / "none", clients=2).node_env(1) == {}


@pytest.mark.gpu
@pytest.mark.e2e
@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_virtual_clients_share_one_gpu_in_simulation(write_scenario, tmp_path):
    path = write_scenario(gpu_scenario(num_gpus=0.5))  # two of the three clients at a time on one GPU
    out = tmp_path / "run"
    assert fedrecon(["run", str(path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["classes_learned"] == 12
    assert all(m["cuda"] == 1.0 for m in task_lines(out))


@pytest.mark.gpu
@pytest.mark.e2e
@pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine")
def test_supernodes_pinned_to_one_gpu_train_adapters_on_it(write_scenario, tmp_path):
    path = write_scenario(gpu_scenario())
    out = tmp_path / "run"
    with LocalDeployment(tmp_path / "deploy", clients=3, gpus=("0",)) as d:
        run_id = d.submit({"scenario": str(path), "out": str(out)})
        assert d.wait(run_id, 600) == "finished:completed", d.log(run_id)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["classes_learned"] == 12 and summary["final_accuracy"] > 0.6
    assert all(m["cuda"] == 1.0 for m in task_lines(out))
