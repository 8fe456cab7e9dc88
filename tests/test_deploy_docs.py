"""docs/deployment.md's multi-machine procedure, run as written on loopback.

The shell blocks marked ``<!-- loopback: ... -->`` in the doc are run in their order, with
the doc's variables set for one machine (``LINK=localhost``, free ports, a temp ``WORK``):
certificates and node keys by ``fedrecon certs`` / ``node-key``, a SuperLink with TLS and
SuperNode authentication, the keys registered, three SuperNodes, the run submitted and
waited for, the report. While the run goes, one SuperNode is killed with everything it
started (as a crash would end it) and started again by the same command; with node
authentication it keeps its node id (Flower ties the id to the registered key), but its
context, and with it the run's setup, is gone. A SuperNode with an unregistered key is refused.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from server.cli import QUIET_FLOWER
from server.deploy import free_port
from tests.conftest import DATA_ROOT, small_scenario

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deployment.md"
BLOCK = re.compile(r"<!-- loopback: (?P<tag>[a-z ]+?) -->\n```bash\n(?P<body>.*?)```", re.S)
NODES = 3
RESTARTED = 1


def doc_blocks() -> list[tuple[str, str]]:
    return [(m["tag"], m["body"]) for m in BLOCK.finditer(DOC.read_text())]


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

    def kill(self, name: str) -> None:
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.procs[name].wait(timeout=30)

    def stop(self) -> None:
        for name in sorted(self.procs, key=lambda n: n == "superlink"):
            try:
                os.killpg(self.procs[name].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


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


@pytest.fixture(scope="module")
def documented(tmp_path_factory):
    """Run the doc's blocks; what the test checks afterwards."""
    tmp = tmp_path_factory.mktemp("multi")
    scenario = tmp / "scenario.yaml"
    # 12 classes in 2 rounds; the killed node's round-2 task is retried in the rounds after (3 tries)
    scenario.write_text(yaml.safe_dump(small_scenario(faults={"reply_timeout": 30, "retries": 3})))
    port = free_port()
    env = {**os.environ, **QUIET_FLOWER, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "LINK": "localhost", "LINK_IP": "127.0.0.1", "PORT": str(port), "N": str(NODES), "WORK": str(tmp / "work"),
           "DATA": str(DATA_ROOT), "SCENARIO": str(scenario), "RUNS": str(tmp / "runs")}
    blocks = doc_blocks()
    preamble = "".join(body for tag, body in blocks if tag == "env")
    shell = Shell(env, preamble, tmp)
    node_ports = {k: str(free_port()) for k in [*range(NODES), 9]}
    out: dict = {"tags": [tag for tag, _ in blocks], "outputs": []}
    run_dir = tmp / "runs" / "deployed"
    try:
        for tag, body in blocks:
            if tag == "run":
                out["outputs"].append(shell.run(body))
            elif tag == "start superlink":
                shell.start("superlink", body)
                wait_for_port(port)
            elif tag == "start supernode":
                out["supernode"] = body
                for k in range(NODES):
                    shell.start(f"node{k}", body, K=str(k), NODE_PORT=node_ports[k])
            elif tag == "run submit":
                submit = shell.start("submit", body)
                deadline = time.monotonic() + 300
                while rounds_done(run_dir) < 1 and submit.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert rounds_done(run_dir) >= 1, (tmp / "submit.log").read_text()
                shell.kill(f"node{RESTARTED}")  # mid-run: round 2's task is on its way to it
                # as the doc says: the SuperLink holds a killed node's id for up to a minute,
                # and a SuperNode started again in that time exits (305); start it until it stays
                deadline = time.monotonic() + 150
                while time.monotonic() < deadline:
                    again = shell.start(f"node{RESTARTED}-again", out["supernode"], K=str(RESTARTED),
                                        NODE_PORT=node_ports[RESTARTED])
                    try:
                        again.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        break
                    out["refused_restarts"] = out.get("refused_restarts", 0) + 1
                    time.sleep(5)
                out["submit_code"] = submit.wait(timeout=400)
                out["submit_log"] = (tmp / "submit.log").read_text()
            elif tag != "env":
                raise ValueError(f"docs/deployment.md: unknown loopback tag {tag!r}")
        # a SuperNode whose key was never registered, started by the doc's own command
        shell.run('fedrecon node-key "$WORK/keys/node9"')
        intruder = shell.start("intruder", out["supernode"], K="9", NODE_PORT=node_ports[9])
        try:
            out["intruder_code"] = intruder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            out["intruder_code"] = None
        summary = run_dir / "summary.json"
        out["summary"] = json.loads(summary.read_text()) if summary.exists() else {}
        out["report"] = (tmp / "runs" / "report" / "report.md").exists()
        out["certificate"] = tmp / "work" / "certs" / "server.pem"
        yield out
    finally:
        shell.stop()


def test_the_documented_commands_deploy_with_tls_and_registered_node_keys(documented):
    assert documented["tags"].count("start supernode") == 1 and "run submit" in documented["tags"]
    assert documented["submit_code"] == 0, documented["submit_log"]
    summary = documented["summary"]
    assert summary["classes_learned"] == summary["classes_seen"] == 12
    assert summary["final_accuracy"] > 0.8
    assert documented["report"]
    assert documented["intruder_code"] not in (None, 0), "a SuperNode with an unregistered key was let in"


def test_a_supernode_killed_mid_run_and_started_again_loses_nothing(documented):
    summary = documented["summary"]
    assert documented["submit_code"] == 0, documented["submit_log"]
    assert summary["classes_learned"] == summary["classes_seen"] == 12
    assert summary["lost_tasks"] == 0
    assert summary["failures"] >= 1 and summary["retries"] >= 1


def test_certs_name_the_hosts_given_and_never_overwrite(tmp_path):
    from cryptography import x509

    from server.cli import main

    assert main(["certs", str(tmp_path / "c"), "--host", "fl.example.org", "--ip", "10.1.2.3"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    ca = x509.load_pem_x509_certificate((tmp_path / "c" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    before = (tmp_path / "c" / "server.key").read_bytes()
    assert main(["certs", str(tmp_path / "c"), "--host", "other"]) == 2
    assert (tmp_path / "c" / "server.key").read_bytes() == before
    assert main(["certs", str(tmp_path / "d"), "--ip", "10.1.2"]) == 2
    assert main(["node-key", str(tmp_path / "k" / "node0")]) == 0
    assert (tmp_path / "k" / "node0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert main(["node-key", str(tmp_path / "k" / "node0")]) == 2
