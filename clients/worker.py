"""A node's long-lived worker for task messages in deployment.

Flower 1.42 starts a new ``flwr-clientapp`` process for every message a SuperNode
gets, so a task learned in that process imports torch and fedrecon's learning code
and builds its backbone every time: about 2 s a message on 2 cores, more than all of
Flower's own cost (docs/benchmarks.md, deployment timeline). Flower has no long-lived
ClientApp, so the first task a SuperNode gets starts this worker beside it; that task
and every later one hand their work to it over a Unix socket, and the ClientApp
process only decodes and encodes the messages. The worker keeps its imports, parsed
scenarios and built backbones (by digest). It is written here, not taken from a
library, because what it must do is small and tied to Flower's process model: serve
one node, speak numpy without pickle, die with the SuperNode.

- One worker a SuperNode process and code tree: the socket's name is a digest of the
  SuperNode's pid, the code's folder and its files' modification times, and the node
  config. A restarted SuperNode or changed code gets a new worker.
- The socket lives in ``$TMPDIR/fedrecon-workers-UID``, a folder only this user may
  enter (a SuperNode's own folders can be too deep for a socket's 108-byte name).
- It exits when the SuperNode that started it is gone, or after ``worker-idle-s``
  seconds without a request (node config, default 600; ``0``: no worker, each task
  learns in its own process as before).
- Requests and answers: a JSON header and an ``.npz`` body, each after its length;
  ``np.load(allow_pickle=False)``. One request at a time.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clients.node import prepare_data

ROOT = Path(__file__).resolve().parents[1]  # the code tree (the repository, or the run's unpacked FAB)
CODE = ("clients", "fedrecon")  # the folders whose sources the worker runs
IDLE_S = 600.0
START_S = 120.0  # how long a task waits for a worker it started to listen


class WorkerError(RuntimeError):
    """The worker could not do the task (its error, or it died): the task's error reply says why."""


def wanted(node_config) -> bool:
    """True in a SuperNode's per-message ClientApp process, unless the node config says ``worker-idle-s=0``."""
    return sys.argv[0].endswith("flwr-clientapp") and float(node_config.get("worker-idle-s", IDLE_S)) > 0


def _plain(node_config) -> dict[str, str]:
    """The node config as JSON-able strings (a socket's key, a request's header)."""
    return {k: str(v) for k, v in dict(node_config).items()}


def _code_stamp() -> str:
    stamps = [f"{p}:{p.stat().st_mtime_ns}" for folder in CODE for p in sorted((ROOT / folder).rglob("*.py"))]
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()


def socket_path(node_config) -> Path:
    """Where this SuperNode's worker for this code listens."""
    folder = Path(tempfile.gettempdir()) / f"fedrecon-workers-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise WorkerError(f"{folder} must belong to this user alone (mode 700)")
    config = json.dumps(_plain(node_config), sort_keys=True)
    key = hashlib.sha256(f"{os.getppid()}|{ROOT}|{_code_stamp()}|{config}".encode()).hexdigest()[:24]
    return folder / f"{key}.sock"


# --- the wire: a length, a JSON header, a length, an npz body --------------------------------------------------------

def _send(conn: socket.socket, header: dict, arrays: dict[str, np.ndarray]) -> None:
    body = io.BytesIO()
    np.savez(body, **arrays)
    head = json.dumps(header).encode()
    conn.sendall(struct.pack("<Q", len(head)) + head + struct.pack("<Q", body.getbuffer().nbytes))
    conn.sendall(body.getbuffer())


def _exactly(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise WorkerError("the node's worker closed the connection mid-message (it died?)")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(conn: socket.socket) -> tuple[dict, dict[str, np.ndarray]]:
    header = json.loads(_exactly(conn, struct.unpack("<Q", _exactly(conn, 8))[0]))
    body = _exactly(conn, struct.unpack("<Q", _exactly(conn, 8))[0])
    with np.load(io.BytesIO(body), allow_pickle=False) as npz:
        return header, {k: npz[k] for k in npz.files}


# --- the ClientApp's side ---------------------------------------------------------------------------------------------

def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def _spawn(path: Path, node_config) -> subprocess.Popen:
    idle = float(node_config.get("worker-idle-s", IDLE_S))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with open(path.with_suffix(".log"), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "clients.worker", str(path), str(os.getppid()), str(idle)],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)


def warm(node_config, scenario_json: str | None = None) -> None:
    """Start this node's worker if none listens, and have it prepare the data of
    ``scenario_json``, without waiting for either (the identify query does this, so that
    the imports and the data overlap the server's preparation)."""
    path = socket_path(node_config)
    header = {"prepare": scenario_json, "node_config": _plain(node_config)}
    conn = _connect(path)
    if conn is None:
        if scenario_json:  # a new worker reads it once it listens
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(header))
            os.replace(tmp, path.with_suffix(".prepare.json"))
        _spawn(path, node_config)
        return
    with conn:
        if scenario_json:
            try:
                _send(conn, header, {})  # not answered: the worker prepares while this query replies
            except OSError:
                pass


def _start(path: Path, node_config) -> socket.socket:
    """Start the worker (detached, in its own session) and wait until it listens."""
    proc = _spawn(path, node_config)
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        conn = _connect(path)
        if conn is not None:
            return conn
        if proc.poll() not in (None, 0) and _connect(path) is None:  # 0: another worker holds the lock, and comes
            raise WorkerError(f"the node's worker exited at start ({proc.returncode}); see {path.with_suffix('.log')}")
        time.sleep(0.02)
    raise WorkerError(f"the node's worker did not listen within {START_S:.0f} s; see {path.with_suffix('.log')}")


def learn(setup: dict, node_config, sample_index: np.ndarray, sample_labels: np.ndarray,
          noise_std: float | None, timings: dict) -> dict[str, np.ndarray]:
    """The task's statistics (``ClassStats.to_arrays``), learned by this node's worker.

    ``setup`` is the setup record the node holds (digest, scenario JSON, backbone digest,
    weights; the worker reads weights the server sent from the node's weight store);
    ``timings`` gets the worker's own (data, backbone, embedding), ``worker_s`` (the time
    to reach it: 0 when running, seconds when this task started it) and ``cuda``."""
    arrays = {"sample_index": sample_index, "sample_labels": sample_labels}
    answer, stats = ask(node_config, {"setup": setup, "noise_std": noise_std}, arrays, timings)
    timings.update(answer["timings"])
    return stats


def ask(node_config, header: dict, arrays: dict[str, np.ndarray], timings: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """This node's worker's answer to a request (a task, or a site's operation: ``op``);
    its error raised here as the same kind of exception (a site's data error, a missing setup)."""
    path = socket_path(node_config)
    header = {**header, "node_config": _plain(node_config)}
    for attempt in (1, 2):  # a worker that dies under the request (killed, out of memory) is replaced once
        clock = time.perf_counter()
        conn = _connect(path) or _start(path, node_config)
        timings["worker_s"] = round(time.perf_counter() - clock, 4)
        try:
            with conn:
                _send(conn, header, arrays)
                answer, out = _receive(conn)
            break
        except (OSError, WorkerError) as e:
            if attempt == 2:
                raise WorkerError(f"the node's worker died during the task twice ({e}); "
                                  f"see {path.with_suffix('.log')}") from e
            path.unlink(missing_ok=True)  # so that the next connect starts a new worker, not this dying one
    if "error" in answer:
        from clients.setup import NoSetup  # the server sends the weights again
        from fedrecon.data.dataset import DataError

        kinds = {"ValueError": ValueError, "NoSetup": NoSetup, "DataError": DataError}
        raise kinds.get(answer["kind"], WorkerError)(answer["error"])
    return answer, out


# --- the worker's side ------------------------------------------------------------------------------------------------

def _do(header: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    if "op" in header:  # a site's operation (clients/site_ops.py)
        from clients.site_ops import serve

        return serve(header, arrays)
    from clients.learner import learn_task
    from clients.node import setup_from
    from fedrecon.backbones.embed import pick_device

    setup = setup_from(header["setup"], header["node_config"])
    timings = {"cuda": float(pick_device(setup.scenario.model.device).type == "cuda")}
    stats = learn_task(setup, arrays["sample_index"], arrays["sample_labels"], header["noise_std"], timings)
    return {"timings": timings}, stats.to_arrays()


def _forget(path: Path) -> None:
    """Remove a gone SuperNode's lock file, and its log unless a worker wrote to it."""
    path.with_suffix(".lock").unlink(missing_ok=True)
    log = path.with_suffix(".log")
    if log.exists() and log.stat().st_size == 0:
        log.unlink()


def serve(path: Path, parent: int, idle: float) -> None:
    """Answer tasks on ``path`` until ``parent`` is gone or ``idle`` seconds pass without one."""
    lock = open(path.with_suffix(".lock"), "w")
    deadline = time.monotonic() + 5.0  # a killed worker may hold the lock a moment longer while it exits
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                return  # another worker for this node and code runs, or is starting
            time.sleep(0.05)
    import clients.learner  # noqa: F401  (the imports every task needs, before the first one waits on them)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that the socket goes with the worker
    path.unlink(missing_ok=True)  # a dead worker's socket
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.settimeout(1.0)
    ask = path.with_suffix(".prepare.json")  # the identify query's scenario, left by warm()
    if ask.is_file():
        try:
            header = json.loads(ask.read_text())
            ask.unlink(missing_ok=True)
        except (OSError, ValueError):
            header = {}
        if header.get("prepare"):
            prepare_data(header["prepare"], header["node_config"])
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle:
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                _forget(path)  # the SuperNode is gone: no one will ask for this key again
                return
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    header, arrays = _receive(conn)
                    if "prepare" in header:  # no answer: the identify query that sent it has gone on
                        prepare_data(header["prepare"], header["node_config"])
                    else:
                        _send(conn, *_do(header, arrays))
                except Exception as e:  # the task's error goes back to the task's ClientApp, the worker stays
                    try:
                        _send(conn, {"error": f"{e}", "kind": type(e).__name__}, {})
                    except OSError:
                        pass
            last = time.monotonic()
    finally:
        server.close()
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
