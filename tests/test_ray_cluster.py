"""The simulation on an existing Ray cluster (``simulation.ray_address``): a local cluster
of two Ray nodes started with ``ray start``, the virtual clients' actors on both, and the
same statistics as the default run, which starts its own Ray."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from server.cli import QUIET_FLOWER
from tests.conftest import REPO, small_scenario

pytestmark = pytest.mark.e2e
RAY = Path(sys.executable).with_name("ray")
ENV = {**os.environ, **QUIET_FLOWER, "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """A head and a second Ray node on this machine, in a folder of their own; ``--block``
    keeps each in a process this test stops, so no other Ray on the machine is touched."""
    folder = Path(tempfile.mkdtemp(prefix="fr-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    port = _free_port()
    common = ["--num-cpus=1", "--disable-usage-stats", "--block"]
    head = subprocess.Popen([str(RAY), "start", "--head", f"--port={port}", f"--temp-dir={folder}", "--include-dashboard=false",
                             *common], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs = [head]
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while subprocess.run([str(RAY), "status", f"--address={address}"], env=ENV, capture_output=True).returncode:
            if time.monotonic() > deadline:
                pytest.fail("the Ray head did not come up within 60 s")
            time.sleep(1)
        procs.append(subprocess.Popen([str(RAY), "start", f"--address={address}", *common], env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        while subprocess.run([str(RAY), "status", f"--address={address}"], env=ENV, capture_output=True,
                             text=True).stdout.count(" node_") < 2:
            if time.monotonic() > deadline:
                pytest.fail("the second Ray node did not join within 60 s")
            time.sleep(1)
        yield address, folder
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        shutil.rmtree(folder, ignore_errors=True)


def _run(path: Path, out: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "server.cli", "run", str(path), "--out", str(out), *[a for s in sets for a in ("--set", s)]]
    return subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stats(out: Path) -> dict:
    with np.load(out / "stats.npz") as npz:
        return {k: npz[k] for k in npz.files}


def test_a_run_on_a_local_ray_cluster_equals_the_default_run(cluster, write_scenario, tmp_path):
    address, folder = cluster
    path = write_scenario(small_scenario(clients={"count": 4}))
    on_cluster = _run(path, tmp_path / "cluster", f"simulation.ray_address={address}")
    log, _ = on_cluster.communicate(timeout=600)
    assert on_cluster.returncode == 0, log
    default = _run(path, tmp_path / "default")
    log_default, _ = default.communicate(timeout=600)
    assert default.returncode == 0, log_default
    got, want = _stats(tmp_path / "cluster"), _stats(tmp_path / "default")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    # the run was a driver of this cluster, and its virtual clients' actors ran on both nodes
    logs = folder / "session_latest" / "logs"
    drivers = list(logs.glob(f"python-core-driver-*_{on_cluster.pid}.log"))
    assert drivers, "the run did not join the cluster"
    job = drivers[0].name.split("-")[3][:8]
    actors = {int(p.name.rsplit("-", 1)[1].split(".")[0]) for p in logs.glob(f"worker-*-{job}-*.out")}
    nodes = set()
    for pid in actors:
        for core in logs.glob(f"python-core-worker-*_{pid}.log"):
            nodes |= set(re.findall(r"node_id=([0-9a-f]+)", core.read_text()))
    assert len(actors) >= 2 and len(nodes) == 2, (actors, nodes)


@pytest.mark.parametrize("address, why", [
    ("closed", "no Ray cluster answers at 127.0.0.1:"),
    ("auto", "allowed host:port or ray://host:port"),
])
def test_a_ray_address_that_does_not_answer_is_one_line_before_anything_starts(write_scenario, tmp_path, capsys, address, why):
    from server.cli import main

    address = f"127.0.0.1:{_free_port()}" if address == "closed" else address  # a port nothing listens on
    path = write_scenario(small_scenario())
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--set", f"simulation.ray_address={address}"]) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before Ray or the run folder
