"""What a client checks before it learns a task, and the reply poller's timeout.

A task whose labels disagree with the client's data, whose sample indices fall outside it,
or whose backbone does not match the server's digest is refused with an error reply; the
server records it and offers the task again, and the run ends with the undisturbed run's
statistics. Runs on the in-process grid (tests/inprocess.py): the real ClientApp, no engine.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedrecon import protocol as P
from fedrecon.scenario import load_scenario
from server.polling import PollingGrid
from server.prepare import prepare
from server.run import Run
from strategies.wire import from_record, to_record
from tests.conftest import small_scenario
from tests.inprocess import InProcessGrid
from tests.test_strategy import identity  # noqa: F401 (fixture)


class Tampering(InProcessGrid):
    """Changes the first task message of client ``client`` (node 100 + client) before it is delivered."""

    def __init__(self, clients: int, client: int, change):
        super().__init__(clients)
        self.target, self.change, self.done = 100 + client, change, False

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for i, m in enumerate(messages):
            if not self.done and m.metadata.dst_node_id == self.target and P.TASK_CONFIG in m.content:
                content = RecordDict(dict(m.content))
                self.change(content)
                messages[i] = Message(content, dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type)
                self.done = True
        return super().send_and_receive(messages, timeout=timeout)


def relabel(content):
    arrays = from_record(content[P.TASK_ARRAYS])
    arrays["sample_labels"] = arrays["sample_labels"][::-1].copy()
    content[P.TASK_ARRAYS] = to_record(arrays)


def out_of_range(content):
    arrays = from_record(content[P.TASK_ARRAYS])
    arrays["sample_index"] = arrays["sample_index"] + 10**9
    content[P.TASK_ARRAYS] = to_record(arrays)


def other_digest(content):
    content[P.SETUP] = ConfigRecord({**dict(content[P.SETUP]), "backbone_digest": "0" * 16})


def run_on(grid, path, out) -> tuple[dict, Run]:
    job = Run(grid, prepare(load_scenario(path)), out, echo=lambda *a: None, poll_interval=0)
    job.start()
    return job.run(), job


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # before the autouse fixture runs
    folder = tmp_path_factory.mktemp("undisturbed")
    path = folder / "s.yaml"
    path.write_text(json.dumps(small_scenario()))
    summary, job = run_on(InProcessGrid(3), path, folder / "run")
    return path, job.state.stats


@pytest.mark.parametrize("change, reason", [
    (relabel, "the server's labels disagree with this client's copy of the dataset"),
    (out_of_range, "sample index outside the dataset's 13180 samples"),
    # weights sent that do not match it, or none held for it (the machine holds the real ones)
    (other_digest, "digest 0000000000000000"),
], ids=["labels", "indices", "digest"])
def test_a_task_the_client_refuses_is_recorded_and_offered_again(undisturbed, change, reason, tmp_path):
    path, clean = undisturbed
    summary, job = run_on(Tampering(3, client=1, change=change), path, tmp_path / "run")
    (failure,) = job.state.failures
    assert failure["client"] == 1 and failure["round"] == 1 and reason in failure["reason"]
    assert summary["failures"] == 1 and summary["retries"] == 1 and summary["lost_tasks"] == 0
    np.testing.assert_array_equal(job.state.stats.ids, clean.ids)
    np.testing.assert_allclose(job.state.stats.sums, clean.sums, rtol=1e-12)


def test_a_node_that_lost_its_setup_gets_it_again(undisturbed, tmp_path):
    # Prepare: after round 1, node 101 loses its context but keeps its id (no identify can tell)
    path, clean = undisturbed

    class Forgetful(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if any(int(m.content[P.TASK_CONFIG]["round"]) == 2 for m in messages if P.TASK_CONFIG in m.content):
                self.contexts[101].state = RecordDict()
            return super().send_and_receive(messages, timeout=timeout)

    # Execute
    summary, job = run_on(Forgetful(3), path, tmp_path / "run")
    # Assert: one refused task ("no setup"), then the setup and backbone again, and nothing lost
    assert [f["client"] for f in job.state.failures] == [1] and "holds no setup" in job.state.failures[0]["reason"]
    assert summary["lost_tasks"] == 0 and summary["bytes_down_resent"] > 0
    np.testing.assert_allclose(job.state.stats.sums, clean.sums, rtol=1e-12)


class SlowGrid:
    """push/pull like Flower's deployment Grid: message k's reply is ready ``delays[k]`` s after the push."""

    def __init__(self, delays):
        self.delays, self.pushed, self.pulls = delays, {}, 0

    def push_messages(self, messages):
        now = time.monotonic()
        ids = []
        for k, m in enumerate(messages):
            ids.append(f"m{k}")
            self.pushed[f"m{k}"] = now + self.delays[k]
        return ids

    def pull_messages(self, ids):
        self.pulls += 1
        ready = [i for i in ids if time.monotonic() >= self.pushed[i]]
        out = []
        for i in ready:
            reply = Message(RecordDict(), dst_node_id=0, message_type="train")
            reply.metadata.__dict__["_reply_to_message_id"] = i
            out.append(reply)
        return out


def test_the_poller_returns_every_reply_as_soon_as_the_last_comes():
    grid = SlowGrid([0.0, 0.05, 0.1])
    start = time.monotonic()
    replies = PollingGrid(grid, interval=0.02).send_and_receive([object()] * 3, timeout=5.0)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert time.monotonic() - start < 1.0 and grid.pulls >= 3


def test_the_poller_gives_up_at_the_timeout_with_the_replies_it_has():
    grid = SlowGrid([0.0, 0.05, 60.0])
    start = time.monotonic()
    replies = PollingGrid(grid, interval=0.02).send_and_receive([object()] * 3, timeout=0.3)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 0.3 <= time.monotonic() - start < 1.0
    assert PollingGrid(grid).send_and_receive([], timeout=1.0) == []
