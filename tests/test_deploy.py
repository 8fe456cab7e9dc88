"""On Flower's deployment engine, loopback only: a SuperLink and one SuperNode per client.
TLS, node keys and a SuperNode restart: tests/test_deploy_docs.py, through the doc's own commands."""

from __future__ import annotations

import json

import pytest

from server.deploy import LocalDeployment
from tests.conftest import small_scenario

pytestmark = pytest.mark.e2e


def run_on(deployment: LocalDeployment, scenario_path, out, timeout: float = 300) -> dict:
    run_id = deployment.submit({"scenario": str(scenario_path), "out": str(out)})
    status = deployment.wait(run_id, timeout)
    assert status == "finished:completed", deployment.log(run_id)
    return json.loads((out / "summary.json").read_text())


def test_scenario_completes_with_evaluation_on_the_clients(write_scenario, tmp_path):
    # The server holds no test data here: the SuperNodes score their shares.
    path = write_scenario(small_scenario(evaluation={"where": "clients"}, faults={"reply_timeout": 120}))
    with LocalDeployment(tmp_path / "deploy", clients=3) as deployment:
        summary = run_on(deployment, path, tmp_path / "run")
    assert summary["classes_learned"] == summary["classes_seen"] == 12
    assert summary["failures"] == 0 and summary["final_accuracy"] > 0.8
    assert all(p.poll() is not None for p in deployment.procs.values())
