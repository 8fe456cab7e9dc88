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
import re
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

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deployment.md"
BLOCK = re.compile(r"<!-- (?:loopback: )?(?P<tag>[a-z ]+?) -->\n```bash\n(?P<body>.*?)```", re.S)
LOOPBACK = re.compile(r"<!-- loopback: (?P<tag>[a-z ]+?) -->\n```bash\n(?P<body>.*?)```", re.S)
BASH = re.compile(r"```bash\n(.*?)```", re.S)
NODES = 3
CLASSES = 3  # characters a site holds
RESTARTED = 1
# set by the shell or the login, not by the doc
ENVIRONMENT = {"HOME", "PATH", "USER"}

# loopback stand-ins for the copy step: ``ssh HOST CMD`` runs CMD here; ``scp SRC HOST:DST``
# writes down DST, checks that its folder exists and copies unless SRC is DST (one machine)
FAKE_SSH = '#!/bin/bash\nshift\nexec bash -c "$*"\n'
FAKE_SCP = """#!/bin/bash
dst=${2#*:}
echo "$dst" >> "$SCP_LOG"
test -d "$(dirname "$dst")" || { echo "scp: no folder for $dst" >&2; exit 1; }
[ "$(realpath "$1")" = "$(realpath -m "$dst")" ] || cp "$1" "$dst"
"""


def loopback_blocks() -> list[tuple[str, str]]:
    return [(m["tag"], m["body"]) for m in LOOPBACK.finditer(DOC.read_text())]


def block(tag: str) -> str:
    (body,) = [m["body"] for m in BLOCK.finditer(DOC.read_text()) if m["tag"] == tag]
    return body


# --- the doc, read -------------------------------------------------------------------------------

USE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
DEFINE = re.compile(r"(?:^|[\s;&|(])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")
LOOP = re.compile(r"\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b")


def undefined_names(blocks: list[str]) -> list[str]:
    """``$NAME``s used in a shell block before any earlier line of the doc's shell blocks set
    them (an assignment, ``export``, a ``for`` loop's name), in reading order."""
    defined, missing = set(ENVIRONMENT), []
    for text in blocks:
        for number, line in enumerate(text.splitlines(), 1):
            defined |= set(DEFINE.findall(line)) | set(LOOP.findall(line))
            missing += [f"{name} (line {number}: {line.strip()})" for name in USE.findall(line) if name not in defined]
    return missing


def test_every_variable_the_doc_uses_is_set_earlier_in_the_doc():
    blocks = BASH.findall(DOC.read_text())
    assert len(blocks) > 10
    assert undefined_names(blocks) == []
    # the checker itself: a name used before it is set is found, a loop's name is set
    assert undefined_names(['echo "$RUNS"\n', "RUNS=/tmp/r\n"]) == ['RUNS (line 1: echo "$RUNS")']
    assert undefined_names(["for K in 1 2; do echo $K; done\n"]) == []


def test_the_variables_block_names_what_the_test_sets():
    names = set(DEFINE.findall(block("variables")))
    assert names == set(doc_variables(Path("/w"), 1, {}, Path("/s"))) - {"SCP_LOG"}


def test_the_copy_step_writes_exactly_the_paths_the_supernode_reads():
    copy, node = block("copy"), _script_only()
    written = re.findall(r'scp "[^"]+" "\$HOST:([^"]+)"', copy)
    sources = re.findall(r'scp "([^"]+)" "\$HOST:', copy)
    read = re.findall(r'--(?:root-certificates|auth-supernode-private-key) "([^"]+)"', node)
    assert written and sorted(written) == sorted(read) == sorted(sources)
    made = re.findall(r'mkdir -p ((?:"[^"]+" ?)+)', copy)[0]
    assert {str(Path(p).parent) for p in written} <= set(re.findall(r'"([^"]+)"', made))
    # and step 2 makes them: fedrecon certs writes ca.crt into $WORK/certs, node-key $WORK/keys/node$K
    certs = block_with("fedrecon certs")
    assert '"$WORK/certs"' in certs and '"$WORK/keys/node$K"' in certs
    assert set(written) == {"$WORK/certs/ca.crt", "$WORK/keys/node$K"}


def block_with(text: str) -> str:
    (body,) = [b for b in BASH.findall(DOC.read_text()) if text in b]
    return body


# --- the doc, run ---------------------------------------------------------------------------------


def doc_variables(work: Path, port: int, node_ports: dict, sites: Path) -> dict[str, str]:
    """The doc's variables (its ``variables`` block) for one machine; K, SITE and NODE_PORT per node."""
    return {"FEDRECON": str(REPO), "WORK": str(work), "LINK": "localhost", "LINK_IP": "127.0.0.1", "PORT": str(port),
            "N": str(NODES), "SCENARIO": str(work / "sites.yaml"), "RUNS": str(work / "runs"),
            "NODES": " ".join(["localhost"] * NODES), "K": "0", "SITE": str(sites / "site-0"),
            "NODE_PORT": str(node_ports.get(0, 9094)), "SCP_LOG": str(work / "scp.log")}


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
        shell.run(_script_only(), **node(9))
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


def _script_only() -> str:
    """The ``node`` block that writes the SuperNode's script (not the one that predicts)."""
    (script,) = [b for tag, b in loopback_blocks() if tag == "node" and "supernode.sh" in b]
    return script


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
