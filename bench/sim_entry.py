"""What ``fedrecon run`` would cost on ``flwr run``: one tiny scenario (the end-to-end
tests' small one) run both ways on Flower's simulation engine, wall seconds and the peak
memory of each way's processes.

- ``run_simulation``: ``fedrecon run`` as it is (Flower's deprecated ``run_simulation``,
  in the process that checked the scenario).
- ``flwr run``: a local ``flower-superlink --simulation`` of its own (private FLWR_HOME, a
  free port), ``flwr run .`` with the scenario in the run config, polled with ``flwr list``
  until finished; its seconds from starting the SuperLink, and from submitting the run.

Memory is the largest sum of the proportional set sizes of the process started and all
its descendants (Ray's included), sampled every 0.1 s from /proc.

Run: .venv/bin/python bench/sim_entry.py [--clients 3]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.cli import QUIET_FLOWER  # noqa: E402
from server.deploy import free_port  # noqa: E402
from tests.conftest import small_scenario  # noqa: E402

BIN = Path(sys.executable).parent


def tree_pss(root: int) -> int:
    """Bytes of memory of ``root`` and every process below it: their proportional set
    sizes (a page shared by k of them counts 1/k in each, so shared libraries count once)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, grown = {root}, True
    while grown:
        below = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= below
        grown = bool(below)
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            total += 1024 * next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except (OSError, StopIteration, IndexError, ValueError):
            pass
    return total


class Peak(threading.Thread):
    """The largest :func:`tree_pss` of ``root`` until stopped."""

    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.done = root, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, tree_pss(self.root))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def via_run_simulation(path: Path, out: Path, env: dict) -> dict:
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "run", str(path), "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = Peak(proc.pid)
    peak.start()
    _, err = proc.communicate(timeout=600)
    seconds, pss = time.monotonic() - start, peak.stop()
    if proc.returncode != 0:
        raise SystemExit(f"fedrecon run failed: {err[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_mib": round(pss / 2**20)}


def flwr(args: list[str], env: dict) -> dict:
    proc = subprocess.run([str(BIN / "flwr"), *args, "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"success": False, "output": proc.stdout[-500:] + proc.stderr[-500:]}


def via_flwr_run(path: Path, out: Path, env: dict, work: Path, clients: int) -> dict:
    home = work / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "bench"\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
                                      "insecure = true\n")
    env = {**env, "FLWR_HOME": str(home)}
    start = time.monotonic()
    link = subprocess.Popen([str(BIN / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1",
                             "--port", str(port), "--database", str(home / "state.db")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = Peak(link.pid)
    peak.start()
    try:
        run_config = f'scenario="{path}" out="{out}"'
        federation = f"num-supernodes={clients} client-resources-num-cpus=1"
        for _ in range(60):  # until the SuperLink listens
            submitted = flwr(["run", ".", "bench", "--run-config", run_config, "--federation-config", federation], env)
            if submitted.get("success"):
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"flwr run was not accepted: {submitted}")
        sent = time.monotonic()
        status = ""
        while not status.startswith("finished") and time.monotonic() - sent < 600:
            time.sleep(0.5)
            runs = flwr(["list", "bench", "--run-id", str(submitted["run-id"])], env).get("runs") or [{}]
            status = runs[0].get("status", "")
        seconds, from_submit = time.monotonic() - start, time.monotonic() - sent
    finally:
        pss = peak.stop()
        link.terminate()
        link.wait(timeout=60)
    if status != "finished:completed":
        raise SystemExit(f"flwr run ended {status!r}")
    return {"seconds": round(seconds, 1), "from_submit": round(from_submit, 1), "peak_mib": round(pss / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, **QUIET_FLOWER, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory(prefix="sim-entry-") as tmp:
        work = Path(tmp)
        path = work / "scenario.yaml"
        path.write_text(yaml.safe_dump(small_scenario(clients={"count": args.clients}), sort_keys=False))
        result = {"clients": args.clients,
                  "run_simulation": via_run_simulation(path, work / "a", env),
                  "flwr_run": via_flwr_run(path, work / "b", env, work, args.clients)}
        same = [json.loads((work / x / "summary.json").read_text())["final_accuracy"] for x in ("a", "b")]
        result["same_accuracy"] = same[0] == same[1]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
