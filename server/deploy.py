"""A local deployment: one SuperLink and one SuperNode per client on 127.0.0.1.

For trials and tests of the deployment engine (``fedrecon deploy-local``): each
process gets its own ``FLWR_HOME`` under ``workdir``; with ``tls`` a throw-away CA
and server certificate are made, with ``auth`` every SuperNode gets a key that is
registered with the SuperLink. docs/deployment.md gives the same steps by hand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.certs import make_certificates, make_node_key
from server.cli import QUIET_FLOWER
from server.polling import POLL_INTERVAL

REPO = Path(__file__).resolve().parents[1]
CONNECTION = "local-deployment"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class LocalDeployment:
    """SuperLink and SuperNodes as child processes; ``stop()`` ends exactly those.

    Parameters
    ----------
    workdir : Path
        Certificates, keys, each process's ``FLWR_HOME`` and log files.
    clients : int
        SuperNodes to start, with partition ids ``0..clients-1``.
    tls, auth : bool
        HTTPS with a throw-away CA; SuperNode authentication with registered keys
        (needs ``tls``).
    data_root : str or None
        ``data-root`` node config of every SuperNode (None: the scenario's path).
    node_config : dict
        More node config of every SuperNode (e.g. ``cache-dir``; ``none`` turns the node's
        disk cache off). By default the SuperNodes of this machine share one cache folder,
        ``workdir/node-cache``, so that a dataset is decoded once, not once a node.
    node_configs : dict of int to dict
        More node config of one SuperNode, by partition id, over ``node_config`` (e.g. each
        site's ``site-folder``).
    task_poll : float
        ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``: how often a SuperExec looks for a new
        app process to start (Flower's default 1 s).
    gpus : tuple of str
        GPU numbers: SuperNode ``k`` (and every app process it starts) sees only
        ``gpus[k % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``); empty: every node sees what
        this process sees. Several SuperNodes may share one GPU.
    """

    workdir: Path
    clients: int
    tls: bool = False
    auth: bool = False
    data_root: str | None = None
    node_config: dict = field(default_factory=dict)
    node_configs: dict[int, dict] = field(default_factory=dict)
    task_poll: float = 0.1
    gpus: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self):
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS (the SuperLink refuses it otherwise)")
        self.workdir = Path(self.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node_config = {"cache-dir": str(self.workdir / "node-cache"), **self.node_config}
        self.certs = make_certificates(self.workdir / "certs") if self.tls else {}
        self.home = self._home("cli")
        conn = f'address = "127.0.0.1:{self.port}"\n'
        conn += f'root-certificates = "{self.certs["ca"]}"\n' if self.tls else "insecure = true\n"
        (self.home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n[superlink.{CONNECTION}]\n{conn}')

    # --- processes -------------------------------------------------------------------------------

    def _home(self, name: str) -> Path:
        home = self.workdir / name
        home.mkdir(exist_ok=True)
        return home

    def env(self, home: Path) -> dict[str, str]:
        bin_dir = Path(sys.executable).parent
        # The SuperLink and SuperNodes start flower-superexec, flwr-serverapp and
        # flwr-clientapp by name: this venv's bin folder goes first on PATH.
        return {**os.environ, **QUIET_FLOWER, "FLWR_HOME": str(home), "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(self.task_poll),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def node_env(self, partition: int) -> dict[str, str]:
        """What a SuperNode's environment adds: its GPU, where GPUs are given."""
        return {"CUDA_VISIBLE_DEVICES": self.gpus[partition % len(self.gpus)]} if self.gpus else {}

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        home = self._home(name)
        log = (self.workdir / f"{name}.log").open("w")
        # Each in its own process group: a SuperNode's SuperExec and app processes go with it.
        proc = subprocess.Popen([str(Path(sys.executable).parent / args[0]), *args[1:]],
                                env={**self.env(home), **(env or {})}, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def tls_args(self, role: str) -> list[str]:
        if not self.tls:
            return ["--insecure"]
        if role == "superlink":
            return ["--ssl-ca-certfile", str(self.certs["ca"]), "--ssl-certfile", str(self.certs["cert"]),
                    "--ssl-keyfile", str(self.certs["key"])]
        return ["--root-certificates", str(self.certs["ca"])]

    def start_superlink(self) -> None:
        args = ["flower-superlink", *self.tls_args("superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--database", str(self._home("superlink") / "state.db")]
        if self.auth:
            args.append("--enable-supernode-auth")
        self._spawn("superlink", args)
        self.wait_for_port()

    def wait_for_port(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise RuntimeError(f"the SuperLink exited with code {self.procs['superlink'].returncode}; see {self.workdir / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the SuperLink did not listen on port {self.port} within {timeout:.0f} s")

    def node_key(self, partition: int, register: bool = True) -> Path:
        private, public = make_node_key(self.workdir / "keys" / f"node{partition}")
        if register:
            self.flwr("supernode", "register", str(public), CONNECTION, "--name", f"node{partition}")
        return private

    def start_supernode(self, partition: int, register: bool = True, name: str | None = None) -> subprocess.Popen:
        """Start the SuperNode of ``partition``; with auth, a key registered unless ``register`` is False."""
        config = f"partition-id={partition} num-partitions={self.clients}"
        if self.data_root:
            config += f' data-root="{self.data_root}"'
        extra = {**self.node_config, **self.node_configs.get(partition, {})}
        config += "".join(f" {k}={json.dumps(v)}" for k, v in extra.items())
        args = ["flower-supernode", *self.tls_args("supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--port", str(free_port()), "--node-config", config]
        if self.auth:
            args += ["--auth-supernode-private-key", str(self.node_key(partition, register))]
        return self._spawn(name or f"supernode{partition}", args, self.node_env(partition))

    def start(self) -> "LocalDeployment":
        self.start_superlink()
        for partition in range(self.clients):
            self.start_supernode(partition)
        return self

    def kill(self, name: str) -> None:
        """Kill a process and everything it started at once (SIGKILL to its group), as a
        crashed or unplugged machine would end."""
        proc = self.procs[name]
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=20)

    def stop(self) -> None:
        """End the processes this deployment started (SuperNodes first) with their children."""
        for name in sorted(self.procs, key=lambda n: n == "superlink"):
            proc = self.procs[name]
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
            _signal_group(proc, signal.SIGKILL)  # children left behind by a leader that exited

    def __enter__(self) -> "LocalDeployment":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the flwr CLI ----------------------------------------------------------------------------

    def flwr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(Path(sys.executable).parent / "flwr"), *args], env=self.env(self.home), cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def submit(self, run_config: dict[str, str | float | int], tries: int = 30, app: Path = REPO) -> int:
        """``flwr run APP`` (this project by default) with the run config; the run id."""
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        answer: dict = {}
        for _ in range(tries):  # right after start the SuperLink may not answer yet
            proc = self.flwr("run", str(app), CONNECTION, "--format", "json", "--run-config", text, check=False)
            try:
                answer = json.loads(proc.stdout)
            except json.JSONDecodeError:
                answer = {"error": proc.stdout + proc.stderr}
            if answer.get("success"):
                return int(answer["run-id"])
            time.sleep(1)
        raise RuntimeError(f"flwr run failed: {answer}")

    def status(self, run_id: int) -> str:
        listed = self.flwr("list", CONNECTION, "--run-id", str(run_id), "--format", "json", check=False)
        try:
            return json.loads(listed.stdout)["runs"][0]["status"]
        except (json.JSONDecodeError, KeyError, IndexError):
            return ""

    def wait(self, run_id: int, timeout: float) -> str:
        """Poll until the run finishes or ``timeout`` seconds pass; its last status."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline and not status.startswith("finished"):
            time.sleep(1)
            status = self.status(run_id)
        return status

    def log(self, run_id: int) -> str:
        return self.flwr("log", str(run_id), CONNECTION, "--show", check=False).stdout


def deploy_and_run(scenario: str | Path, out: str | Path, workdir: str | Path, clients: int, tls: bool = False,
                   auth: bool = False, timeout: float = 1800.0, poll_interval: float = POLL_INTERVAL, echo=print,
                   node_config: dict | None = None, task_poll: float = 0.1, gpus: tuple[str, ...] = ()) -> str:
    """Start a local deployment, run ``scenario`` on it into ``out``, stop it; the run's final status."""
    with LocalDeployment(Path(workdir), clients, tls=tls, auth=auth, node_config=node_config or {},
                         task_poll=task_poll, gpus=gpus) as deployment:
        echo(f"fedrecon: SuperLink on 127.0.0.1:{deployment.port} ({'TLS' if tls else 'insecure'}"
             f"{', SuperNode auth' if auth else ''}), {clients} SuperNodes; logs in {deployment.workdir}")
        run_id = deployment.submit({"scenario": str(Path(scenario).resolve()), "out": str(Path(out).resolve()),
                                    "poll_interval": poll_interval})
        echo(f"fedrecon: run {run_id} submitted")
        status = deployment.wait(run_id, timeout)
        if status != "finished:completed":
            echo(deployment.log(run_id))
        return status
