"""A SuperNode's worker (clients/worker.py): the statistics a task learns in its own
process, once started reused, refusing what the task's process would refuse, gone with
its SuperNode."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients import node, worker
from clients.client_app import app as client_app
from clients.learner import learn_task
from clients.setup import NoSetup, node_cache, weight_store
from fedrecon import protocol as P
from fedrecon.learning import stats as stats_module
from fedrecon.learning.stats import ClassStats, StatsSpec
from fedrecon.protocol import setup_record
from fedrecon.scenario import scenario_json
from server.prepare import prepare
from tests.conftest import REPO, scenario_of


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A setup record, the backbone weights the server sent (in the node's store), a node config and a task's samples."""
    prepared = prepare(scenario_of())
    record = {**setup_record(scenario_json(prepared.scenario), prepared.digest), "weights": "sent"}
    config = {"partition-id": 1, "cache-dir": str(tmp_path_factory.mktemp("cache")), "worker-idle-s": 60}
    weight_store(node_cache(config)).put(prepared.digest, prepared.weights)  # as the setup message does
    labels = prepared.dataset.labels
    index = np.concatenate([np.flatnonzero(labels == 3)[:5], np.flatnonzero(labels == 7)[:5]])
    yield record, prepared.weights, config, index, prepared.dataset.labels[index]
    pid = _worker_pid(worker.socket_path(config))
    if pid > 0:
        os.kill(pid, 15)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a killed worker that this test process started stays a
    zombie until reaped, which counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _worker_pid(path) -> int:
    out = subprocess.run(["pgrep", "-f", f"clients.worker {path}"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else -1


def test_the_worker_learns_what_the_task_would_learn_here_and_stays(task):
    # Prepare
    record, _, config, index, labels = task
    here = learn_task(node.setup_from(record, config), index, labels).to_arrays()
    second = {}
    # Execute: the first task starts the worker, the second finds it
    got = worker.learn(record, config, index, labels, None, {})
    started = _worker_pid(worker.socket_path(config))
    again = worker.learn(record, config, index, labels, None, second)
    # Assert
    for key, value in here.items():
        np.testing.assert_array_equal(got[key], value)
        np.testing.assert_array_equal(again[key], value)
    assert started > 0 and _worker_pid(worker.socket_path(config)) == started and _alive(started)
    assert {"worker_s", "data_s", "backbone_s", "embed_s", "cuda"} <= set(second)


def test_the_worker_refuses_labels_that_disagree_and_serves_the_next_task(task):
    record, _, config, index, labels = task
    with pytest.raises(ValueError, match="labels disagree"):
        worker.learn(record, config, index, labels[::-1].copy(), None, {})
    with pytest.raises(NoSetup, match="no backbone weights"):  # the worker reads its weights from the node's store
        worker.learn({**record, "backbone_digest": "0" * 16}, config, index, labels, None, {})
    assert worker.learn(record, config, index, labels, None, {})["counts"].tolist() == [5, 5]


def test_a_worker_leaves_when_its_supernode_is_gone(task, tmp_path):
    # Prepare: a stand-in SuperNode process whose child (a task) starts a worker, then the SuperNode ends
    record, _, config, index, labels = task
    config = {**config, "cache-dir": str(tmp_path)}  # another node config: another worker
    script = (f"import sys, numpy as np; sys.path.insert(0, {str(REPO)!r}); from clients import worker; "
              f"print(worker.socket_path({config!r}), flush=True); "
              f"worker.learn({record!r}, {config!r}, np.array({index.tolist()}), np.array({labels.tolist()}), None, {{}})")
    supernode = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {script!r}])"],
                                 stdout=subprocess.PIPE, text=True, cwd=REPO)
    path = supernode.stdout.readline().strip()
    supernode.wait(120)
    # Execute: the worker notices its SuperNode is gone (it checks every second)
    deadline = time.monotonic() + 10
    while _worker_pid(path) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    # Assert
    assert _worker_pid(path) < 0 and not os.path.exists(path)


def test_the_worker_is_only_for_a_supernodes_message_processes(monkeypatch):
    assert not worker.wanted({})  # pytest: no
    monkeypatch.setattr(sys, "argv", ["/venv/bin/flwr-clientapp", "--insecure"])
    assert worker.wanted({}) and not worker.wanted({"worker-idle-s": "0"})


def test_a_killed_worker_is_replaced_by_the_next_task(task):
    record, _, config, index, labels = task
    worker.learn(record, config, index, labels, None, {})
    path = worker.socket_path(config)
    old = _worker_pid(path)
    os.kill(old, 9)  # its socket file stays behind
    deadline = time.monotonic() + 10
    while _alive(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    got = worker.learn(record, config, index, labels, None, {})
    assert got["counts"].tolist() == [5, 5] and _worker_pid(path) not in (-1, old)


def test_a_task_arriving_while_the_warmed_worker_starts_waits_for_it(task, tmp_path):
    record, weights, config, index, labels = task
    config = {**config, "cache-dir": str(tmp_path / "warm")}
    weight_store(node_cache(config)).put(record["backbone_digest"], weights)
    worker.warm(config)  # the identify query's start, not waited for
    got = worker.learn(record, config, index, labels, None, {})  # its own start loses the lock: it waits
    assert got["counts"].tolist() == [5, 5]
    os.kill(_worker_pid(worker.socket_path(config)), 15)


def test_a_worker_warmed_with_the_scenario_has_its_data_ready_for_the_first_task(task, tmp_path):
    # Prepare: the identify query's scenario, before any task (a new node, an empty cache)
    record, weights, config, index, labels = task
    config = {**config, "cache-dir": str(tmp_path / "prepared")}
    weight_store(node_cache(config)).put(record["backbone_digest"], weights)
    worker.warm(config, record["scenario"])
    # Execute: the worker decodes the data into the node's cache while nobody asks it anything
    deadline = time.monotonic() + 60
    while not list((tmp_path / "prepared").glob("*.npy")) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Assert: the cache was filled before any task, and the first task is served
    assert list((tmp_path / "prepared").glob("*.npy"))
    got = worker.learn(record, config, index, labels, None, {})
    assert got["counts"].tolist() == [5, 5]
    os.kill(_worker_pid(worker.socket_path(config)), 15)


def test_a_task_sends_its_workers_arrays_as_they_came(monkeypatch, tmp_path):
    # Prepare: a SuperNode's message process whose worker answers with a ridge head's few samples (a Gram factor)
    spec = StatsSpec(random_features=40, projection_seed=1)
    labels = np.array([3, 3, 7])
    sent = ClassStats.from_features(labels, np.random.default_rng(0).standard_normal((3, 4)), spec).to_arrays()
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # a message built outside a Flower app
    monkeypatch.setattr(worker, "wanted", lambda node_config: True)
    monkeypatch.setattr(worker, "learn", lambda *args: sent)
    monkeypatch.setattr(stats_module, "gram_of", lambda factor: pytest.fail("the Gram was formed from its factor"))
    setup = {**setup_record(scenario_json(scenario_of()), "abc"), "weights": "installed"}
    content = {P.SETUP: ConfigRecord(setup), P.TASK_CONFIG: ConfigRecord({"round": 1, "task": 0}),
               P.TASK_ARRAYS: ArrayRecord({"sample_index": Array(np.arange(3)), "sample_labels": Array(labels)})}
    context = Context(1, 1, {"partition-id": 0, "cache-dir": str(tmp_path)}, RecordDict(), {})
    # Execute
    reply = client_app(Message(RecordDict(content), dst_node_id=1, message_type="train"), context)
    # Assert
    got = {k: v.numpy() for k, v in reply.content[P.STATS].items()}
    assert "gram_factor" in got and "gram" not in got and set(got) == set(sent)
    for key, value in sent.items():
        np.testing.assert_array_equal(got[key], value)
