"""docs/deployment.md's three-site procedure, run as written on loopback.

The shell blocks marked ``<!-- loopback: ... -->`` in the doc are run in their order with
the doc's variables set for one machine (``LINK=localhost``, free ports, a temp ``WORK``,
every host ``localhost``, three small Omniglot site folders): certificates and node keys,
the copy to the sites (``ssh`` and ``scp`` played by local commands that check the folder
exists and write down each destination), a SuperLink with TLS and SuperNode
authentication, the scenario, the keys registered, each site's SuperNode script and its
supervisor loop, the run submitted and waited for, the report, and a prediction with each
site's model. While the run goes, one SuperNode is killed with everything it started (as a
crash would end it) while its supervisor lives; the supervisor starts it again (with node
authentication it keeps its node id, but not its context). A SuperNode with an unregistered
key is refused. Without a deployment: every ``$NAME`` the doc's shell blocks use is set
earlier in the doc, and the copy step writes exactly the paths the SuperNode reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedrecon.data.omniglot_sites import write_sites
from server.cli import QUIET_FLOWER
from server.deploy import free_port
from tests.conftest import DATA_ROOT
from tests.test_deploy_docs_text import NODES, REPO, doc_variables, loopback_blocks, script_only

CLASSES = 3  # characters a site holds
RESTARTED = 1

# loopback stand-ins for the copy step: ``ssh HOST CMD`` runs CMD here; ``scp SRC HOST:DST``
# writes down DST, checks that its folder exists and copies unless SRC is DST (one machine)
FAKE_SSH = '#!/bin/bash\nshift\nexec bash -c "$*"\n'
FAKE_SCP = """#!/bin/bash
dst=${2#*:}
echo "$dst" >> "$SCP_LOG"
test -d "$(dirname "$dst")" || { echo "scp: no folder for $dst" >&2; exit 1; }
[ "$(realpath "$1")" = "$(realpath -m "$dst")" ] || cp "$1" "$dst"
"""


# --- the doc, run ---------------------------------------------------------------------------------


class Shell:
    """Runs the doc's blocks in bash, each in its own process group, with the doc's variables."""

    def __init__(self, env: dict[str, str], preamble: str, logs: Path):
        self.env, self.preamble, self.logs = env, preamble, logs
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, body: str, timeout: float = 180, **env) -> str:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", self.preamble + body], env={**self.env, **env},
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"block failed ({proc.returncode}):\n{body}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def start(self, name: str, body: str, **env) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", self.preamble + body], env={**self.env, **env},
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill_children(self, name: str) -> list[int]:
        """Kill everything a block started, at once, but not the block's own shell (its supervisor)."""
        pids = descendants(self.procs[name].pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "superlink"):
            try:
                os.killpg(self.procs[name].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux: /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def stays_up(log: Path, supervisor: subprocess.Popen, timeout: float = 120) -> bool:
    """Whether the supervisor's SuperNode runs and has not exited for 15 s (a restart the
    SuperLink refused exits within a few seconds, and the supervisor starts the next 5 s later)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and supervisor.poll() is None:
        exits = log.read_text().count("exited with code")
        time.sleep(15)
        if log.read_text().count("exited with code") == exits and descendants(supervisor.pid):
            return True
    return False


def wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the SuperLink did not listen on port {port}")


def rounds_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def small_sites(out: Path) -> Path:
    """Three Omniglot site folders of 3 characters each (5 drawings to learn, 3 to test)."""
    write_sites(DATA_ROOT, out, sites=NODES, alphabets=1, later=0, train=5, test=3)
    for site in out.glob("site-*"):
        keep = sorted(p.name for p in (site / "train").iterdir())[:CLASSES]
        for part in ("train", "test"):
            for cls in (site / part).iterdir():
                if cls.name not in keep:
                    shutil.rmtree(cls)
    return out


def shorten(scenario: Path) -> None:
    """The doc's scenario, shortened for a test: 3 rounds back to back, replies given up after 30 s."""
    raw = yaml.safe_load(scenario.read_text())
    raw["rounds"], raw["sites"]["every_s"], raw["faults"]["reply_timeout"] = 3, 0, 30
    scenario.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def documented(tmp_path_factory):
    """Run the doc's blocks; what the test checks afterwards."""
    tmp = tmp_path_factory.mktemp("multi")
    sites = small_sites(tmp / "sites")
    fake = tmp / "fake-bin"
    fake.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("scp", FAKE_SCP)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    port, work = free_port(), tmp / "work"
    node_ports = {k: str(free_port()) for k in [*range(NODES), 9]}
    # the doc puts $FEDRECON/.venv/bin first on PATH; the test's own Python may live elsewhere
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, **QUIET_FLOWER, "PATH": path, **doc_variables(work, port, node_ports, sites)}

    def node(k: int) -> dict[str, str]:
        return {"K": str(k), "SITE": str(sites / f"site-{k % NODES}"), "NODE_PORT": node_ports[k]}

    blocks = loopback_blocks()
    preamble = "".join(body for tag, body in blocks if tag == "env")
    shell = Shell(env, preamble, tmp)
    out: dict = {"tags": [tag for tag, _ in blocks], "predicted": {}, "sites": sites, "work": work,
                 "run_dir": work / "runs" / "deployed"}
    run_dir = out["run_dir"]
    try:
        for tag, body in blocks:
            if tag == "run":
                shell.run(body)
            elif tag == "copy":
                shell.run(body, PATH=f"{fake}{os.pathsep}{env['PATH']}")
                out["copied"] = (work / "scp.log").read_text().split()
            elif tag == "node":
                for k in range(NODES):
                    out["predicted"][k] = shell.run(body, **node(k))
            elif tag == "start superlink":
                shell.start("superlink", body)
                wait_for_port(port)
            elif tag == "start supernode":
                for k in range(NODES):
                    shell.start(f"node{k}", body, **node(k))
            elif tag == "run submit":
                shorten(work / "sites.yaml")
                submit = shell.start("submit", body)
                deadline = time.monotonic() + 300
                while rounds_done(run_dir) < 1 and submit.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert rounds_done(run_dir) >= 1, (tmp / "submit.log").read_text()
                # mid-run (round 2's task is on its way to it): a crash of the SuperNode, not of its supervisor
                out["killed"] = shell.kill_children(f"node{RESTARTED}")
                out["submit_code"] = submit.wait(timeout=400)
                out["submit_log"] = (tmp / "submit.log").read_text()
                out["up_again"] = stays_up(tmp / f"node{RESTARTED}.log", shell.procs[f"node{RESTARTED}"])
                out["supervisor_log"] = (tmp / f"node{RESTARTED}.log").read_text()
            elif tag != "env":
                raise ValueError(f"docs/deployment.md: unknown loopback tag {tag!r}")
        # a SuperNode whose key was never registered, with the doc's own script
        shell.run('fedrecon node-key "$WORK/keys/node9"')
        shell.run(script_only(), **node(9))
        intruder = shell.start("intruder", '"$WORK/node$K/supernode.sh"', **node(9))
        try:
            out["intruder_code"] = intruder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            out["intruder_code"] = None
        out["intruder_log"] = (tmp / "intruder.log").read_text()
        summary = run_dir / "summary.json"
        out["summary"] = json.loads(summary.read_text()) if summary.exists() else {}
        out["report"] = (work / "runs" / "report" / "report.md").exists()
        yield out
    finally:
        shell.stop()


@pytest.mark.e2e
def test_the_documented_commands_deploy_three_sites_with_tls_and_registered_node_keys(documented):
    assert documented["tags"].count("start supernode") == 1 and "run submit" in documented["tags"]
    assert documented["submit_code"] == 0, documented["submit_log"]
    summary = documented["summary"]
    assert summary["classes_learned"] == summary["classes_seen"] == NODES * CLASSES
    assert summary["final_accuracy"] is not None and summary["final_accuracy"] > 0.8
    assert documented["report"]
    work = Path(documented["work"])
    assert sorted(documented["copied"]) == sorted([str(work / "certs" / "ca.crt")] * NODES +
                                                  [str(work / "keys" / f"node{k}") for k in range(NODES)])
    assert documented["intruder_code"] not in (None, 0), "a SuperNode with an unregistered key was let in"
    assert "Exit Code: 305" in documented["intruder_log"]  # as the doc says


@pytest.mark.e2e
def test_each_site_keeps_the_merged_model_and_predicts_with_it(documented):
    from fedrecon.model.model import load_model

    sites = documented["sites"]
    every = sorted(p.name for k in range(NODES) for p in (sites / f"site-{k}" / "train").iterdir())
    for k in range(NODES):
        model = load_model(sites / f"site-{k}" / ".fedrecon" / "model")
        assert sorted(model.names) == every
        lines = [line.split("\t") for line in documented["predicted"][k].splitlines() if "\t" in line]
        assert len(lines) == CLASSES * 3  # the site's test drawings
        right = sum(Path(path).parent.name == label for path, label, *_ in lines)
        assert right >= 0.8 * len(lines), documented["predicted"][k]


@pytest.mark.e2e
def test_a_supernode_killed_mid_run_is_started_again_by_its_supervisor_and_loses_nothing(documented):
    summary = documented["summary"]
    assert documented["killed"], "nothing to kill under the supervisor"
    assert documented["submit_code"] == 0, documented["submit_log"]
    assert "exited with code 137" in documented["supervisor_log"]  # the kill
    assert documented["up_again"], documented["supervisor_log"][-3000:]
    assert summary["classes_learned"] == NODES * CLASSES
    assert summary["lost_tasks"] == 0 and summary["failures"] >= 1
