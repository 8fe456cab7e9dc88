"""The run itself (server.run.Run) on an in-process grid: it equals one site's statistics,
and a run stopped after any round and resumed ends where an undisturbed run ends, for
every merge policy and method."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedrecon.scenario import load_scenario
from server.prepare import prepare
from server.run import Run
from tests.conftest import small_scenario
from tests.inprocess import InProcessGrid
from tests.test_strategy import identity  # noqa: F401 (fixture)

STAGGERED = {**small_scenario()["tasks"], "arrival": {"kind": "staggered", "offset": 1}}  # 3 clients, 4 rounds
ADAPTERS = {"rank": 2, "lr": 1e-3, "epochs": 1, "batch_size": 10}
METHODS = {
    "exact": {},
    "fedrecon": {"merge": {"prototypes": "fedrecon"}},
    "fedproto": {"merge": {"prototypes": "fedproto"}},
    "local": {"merge": {"prototypes": "local"}},
    "centralized": {"merge": {"prototypes": "centralized"}},
    "fedavg_finetune": {"merge": {"method": "fedavg_finetune"}, "finetune": {"epochs": 1, "lr": 1e-3}},
    "ffa": {"merge": {"prototypes": "exact", "adapters": "ffa"}, "adapters": {"schedule": "every_task", **ADAPTERS}},
    "stack": {"merge": {"prototypes": "exact", "adapters": "stack"}, "adapters": {"schedule": "every_task", **ADAPTERS}},
    "adapter steps": {"merge": {"prototypes": "exact", "adapters": "ffa"},
                      "adapters": {"schedule": "first_task", "steps": 2, **ADAPTERS}},
}


class Stop(Exception):
    """The process died: nothing after this point happens."""


def run(path, out, stop_before: int | None = None, resume: bool = False) -> dict | None:
    """The scenario run on fresh in-process nodes; ``stop_before``: the run dies when it
    sends round ``stop_before``'s first message (after round ``stop_before - 1``'s checkpoint)."""
    prep = prepare(load_scenario(path))

    def die(message):
        if stop_before is not None and int(message.content["task_config"]["round"]) >= stop_before:
            raise Stop
        return False

    grid = InProcessGrid(prep.plan.clients, drop=lambda m: "task_config" in m.content and die(m))
    job = Run(grid, prep, out, echo=lambda *a: None, poll_interval=0)
    job.resume() if resume else job.start()
    try:
        return job.run()
    except Stop:
        return None


def ending(out) -> dict:
    with np.load(out / "stats.npz") as npz:
        stats = {k: npz[k] for k in npz.files}
    with np.load(out / "checkpoint.npz") as npz:
        model = {k: npz[k] for k in npz.files if k.startswith("model/")}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"summary": json.loads((out / "summary.json").read_text()), "stats": stats, "model": model, "rows": rows}


@pytest.mark.parametrize("method", list(METHODS))
def test_a_run_stopped_after_a_round_and_resumed_ends_like_an_undisturbed_one(method, write_scenario, tmp_path):
    # Prepare
    path = write_scenario(small_scenario(tasks=STAGGERED, **METHODS[method]))
    assert run(path, tmp_path / "straight") is not None
    # Execute: stopped after round 2's checkpoint, resumed by a new run on new nodes
    assert run(path, tmp_path / "resumed", stop_before=3) is None
    assert not (tmp_path / "resumed" / "summary.json").exists()
    run(path, tmp_path / "resumed", resume=True)
    # Assert: the same statistics (and adapter or model) to the bit, the same rows and summary
    straight, resumed = ending(tmp_path / "straight"), ending(tmp_path / "resumed")
    for part in ("stats", "model"):
        assert straight[part].keys() == resumed[part].keys()
        for key in straight[part]:
            assert straight[part][key].tobytes() == resumed[part][key].tobytes(), (part, key)
    volatile = {"wall_seconds", "bytes_down", "bytes_down_resent"}  # the new nodes get the setup again
    assert {k: v for k, v in resumed["summary"].items() if k not in volatile} == \
           {k: v for k, v in straight["summary"].items() if k not in volatile}
    assert [r["accuracy"] for r in resumed["rows"]] == [r["accuracy"] for r in straight["rows"]]
    s = resumed["summary"]
    assert s["bytes_down_resent"] > 0 and s["bytes_down"] - s["bytes_down_resent"] == straight["summary"]["bytes_down"]


def test_the_run_equals_one_site_and_sends_the_setup_once(write_scenario, tmp_path):
    path = write_scenario(small_scenario(tasks=STAGGERED))
    summary = run(path, tmp_path / "run")
    prep = prepare(load_scenario(path))
    from fedrecon.backbones.embed import embed
    from fedrecon.learning.stats import ClassStats

    index = np.concatenate([a.sample_index for a in prep.plan.arrivals])
    labels = np.concatenate([a.sample_labels for a in prep.plan.arrivals])
    central = ClassStats.from_features(labels, embed(prep.model, prep.dataset.inputs[index]))
    merged = ending(tmp_path / "run")["stats"]
    np.testing.assert_array_equal(merged["ids"], central.ids)
    np.testing.assert_allclose(merged["sums"], central.sums, rtol=1e-9)
    assert summary["failures"] == 0 and summary["rounds"] == 4 and summary["bytes_down_resent"] == 0


def remembered_run(path, out, memory) -> tuple[dict, InProcessGrid]:
    """A run as the deployed ServerApp makes it: identify pushed early, with a node memory."""
    from server.polling import PollingGrid
    from server.identify import EarlyIdentify

    prep = prepare(load_scenario(path))
    nodes = InProcessGrid(prep.plan.clients)
    grid = PollingGrid(nodes, 0.001)
    job = Run(grid, prep, out, echo=lambda *a: None, early=EarlyIdentify.ask(grid, memory))
    job.start()
    return job.run(), nodes


def test_a_next_run_sends_first_tasks_to_remembered_nodes_and_a_wrong_memory_costs_only_a_retry(write_scenario, tmp_path):
    from server.node_memory import NodeMemory

    path = write_scenario(small_scenario())
    memory = NodeMemory(tmp_path / "home" / "fedrecon-nodes.json")
    first, nodes = remembered_run(path, tmp_path / "first", memory)
    assert memory.recall() == {100: 0, 101: 1, 102: 2}
    assert sum(m.metadata.message_type.endswith("identify") for m in nodes.sent) == 3
    # the next run on the same nodes asks nobody: its first tasks go straight out
    second, nodes = remembered_run(path, tmp_path / "second", memory)
    assert not any(m.metadata.message_type.endswith("identify") for m in nodes.sent)
    before = ending(tmp_path / "first")["stats"]
    assert all(np.array_equal(v, before[k]) for k, v in ending(tmp_path / "second")["stats"].items())
    assert second["failures"] == 0 and second["final_accuracy"] == first["final_accuracy"]
    # a memory gone wrong (two nodes swapped): they refuse the tasks, are asked, and the tasks retried
    memory.path.write_text(json.dumps({"nodes": {"100": 1, "101": 0, "102": 2}}))
    third, nodes = remembered_run(path, tmp_path / "third", memory)
    assert third["failures"] == 2 and third["retries"] == 2 and third["lost_tasks"] == 0
    assert third["classes_learned"] == third["classes_seen"] == first["classes_learned"]
    # the same sums, added in another order
    assert all(np.allclose(v, before[k], rtol=1e-12, atol=0) for k, v in ending(tmp_path / "third")["stats"].items())
    assert memory.recall() == {100: 0, 101: 1, 102: 2}


def test_weights_a_machine_holds_are_not_sent_again_and_no_node_keeps_a_copy_in_its_context(write_scenario, tmp_path,
                                                                                            monkeypatch):
    # Prepare: a machine that holds no weights yet
    from clients import setup
    from fedrecon import protocol as P
    from fedrecon.backbones import weights as weights_module

    monkeypatch.setattr(setup, "default_folder", lambda: tmp_path / "machine")
    monkeypatch.setattr(weights_module, "_HELD", {})
    prep = prepare(load_scenario(write_scenario(small_scenario())))
    size = sum(w.nbytes for w in prep.weights.values())

    def one_run(out):
        grid = InProcessGrid(prep.plan.clients)
        job = Run(grid, prep, out, echo=lambda *a: None, poll_interval=0)
        job.start()
        job.run()
        return grid, ending(out)

    # Execute: a first run, then a second one in new processes (nothing held in memory)
    grid, first = one_run(tmp_path / "first")
    monkeypatch.setattr(weights_module, "_HELD", {})
    _, second = one_run(tmp_path / "second")
    # Assert: the first run sent each node the weights, which no context kept; the second sent none
    assert first["rows"][0]["bytes_down"] > 3 * size  # three clients
    assert second["rows"][0]["bytes_down"] < size
    assert all(P.BACKBONE not in c.state for c in grid.contexts.values())
    assert list((tmp_path / "machine").glob("*.npz")) == [tmp_path / "machine" / f"{prep.digest}.npz"]
    for key, value in first["stats"].items():
        np.testing.assert_array_equal(second["stats"][key], value)
