"""A site node's merged model: after each round's delta its model folder (written by
fedrecon.model.export.write_model) scores exactly as the server's head does, and what it
cannot trust (another base, a damaged state, another run) it does not use."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients.node_model import MERGED, MODEL, STATE_FILE, STATS_FILE, NodeModel
from fedrecon.model.export import ClassNames
from fedrecon.learning.heads import build_head, head_spec
from fedrecon.learning.stats import ClassStats, add_stats
from fedrecon.learning.stats_delta import Versions
from fedrecon.model import load_model
from fedrecon.model.export import write_model
from tests.conftest import scenario_of

RUN = "run-a"


@pytest.fixture(scope="module")
def prep():
    from server.prepare import prepare

    return prepare(scenario_of())


def scenario_with(prep, head: str):
    merge = prep.scenario.merge.model_copy(update={"head": head, "random_features": 40})
    return prep.scenario.model_copy(update={"merge": merge})


def writer(prep, scenario):
    """What the ClientApp passes: write_model with the node's backbone (no adapter)."""
    def write(folder, stats, names):
        write_model(folder, scenario=scenario, dataset=ClassNames(names), stats=stats, model=prep.model, adapted=None,
                    entry=prep.entry, dim=prep.dim, run={"round": None}, scenario_text="{}")
    return write


class Server:
    """Merged statistics growing by random client parts, with their versions."""

    def __init__(self, prep, scenario, seed=0):
        self.rng, self.dim = np.random.default_rng(seed), prep.dim
        self.spec, self.names = head_spec(scenario.merge, scenario.seed), prep.dataset.class_names
        self.stats, self.versions, self.round = ClassStats.empty(prep.dim), Versions(), 0

    def merge(self, classes: list[int]) -> None:
        labels = np.repeat(classes, 3)
        part = ClassStats.from_features(labels, self.rng.normal(size=(len(labels), self.dim)), self.spec)
        before, self.stats, self.round = self.stats, add_stats([self.stats, part]), self.round + 1
        self.versions.update(before, self.stats, self.round)

    def send(self, node: NodeModel, write) -> bool:
        delta = self.versions.delta(self.stats, node.version)
        names = {int(c): self.names[int(c)] for c in delta["ids"]}
        return node.update(delta, names, node.version, self.round, write)


def assert_scores_as_the_server(node_folder, server: Server, scenario) -> None:
    model = load_model(node_folder / MODEL)
    head = build_head(server.stats, scenario.merge, scenario.seed)
    features = np.random.default_rng(9).normal(size=(16, server.dim))
    assert np.array_equal(model.head.ids, head.ids)
    assert np.array_equal(model.head.scores(features), head.scores(features))
    assert model.names == [server.names[int(c)] for c in head.ids]
    assert {c["group"] for c in model.manifest["classes"]} == {"site"}


@pytest.mark.parametrize("head", ["ncm", "ridge"])
def test_the_nodes_model_folder_scores_as_the_servers_head_every_round(head, prep, tmp_path):
    # Prepare
    scenario = scenario_with(prep, head)
    server, write = Server(prep, scenario), writer(prep, scenario)
    node = NodeModel(tmp_path, dim=prep.dim, run=RUN)
    assert node.version == 0 and node.stats is None
    for classes in ([0, 1], [2, 3], [1, 4]):
        server.merge(classes)
        # Execute
        assert server.send(node, write)
        # Assert: what the node holds, what it wrote, and what a restarted node reads back
        assert node.version == server.round
        assert all(a.tobytes() == b.tobytes() for a, b in zip(node.stats.to_arrays().values(),
                                                               server.stats.to_arrays().values()))
        assert_scores_as_the_server(tmp_path, server, scenario)
        again = NodeModel(tmp_path, dim=prep.dim, run=RUN)
        assert (again.version, again.names) == (node.version, node.names)
        assert all(np.array_equal(a, b) for a, b in zip(again.stats.to_arrays().values(),
                                                        server.stats.to_arrays().values()))


def test_a_node_that_missed_rounds_catches_up_from_its_own_version(prep, tmp_path):
    scenario = scenario_with(prep, "ncm")
    server, write = Server(prep, scenario), writer(prep, scenario)
    node = NodeModel(tmp_path, dim=prep.dim, run=RUN)
    server.merge([0, 1])
    server.send(node, write)
    server.merge([2])
    server.merge([5, 6])
    # a delta from a base the node does not hold changes nothing
    stale = server.versions.delta(server.stats, 2)
    before = {p.name: p.read_bytes() for p in (tmp_path / MERGED).iterdir()}
    assert not node.update(stale, {}, 2, server.round, write)
    assert node.version == 1 and {p.name: p.read_bytes() for p in (tmp_path / MERGED).iterdir()} == before
    # the one from its own version brings it up to date
    assert server.send(node, write) and node.version == 3
    assert_scores_as_the_server(tmp_path, server, scenario)


def test_a_failed_write_keeps_the_earlier_version(prep, tmp_path):
    scenario = scenario_with(prep, "ncm")
    server, write = Server(prep, scenario), writer(prep, scenario)
    node = NodeModel(tmp_path, dim=prep.dim, run=RUN)
    server.merge([0])
    server.send(node, write)
    server.merge([1])

    def failing(folder, stats, names):
        raise OSError("disk full")

    with pytest.raises(OSError):
        server.send(node, failing)
    assert node.version == 1 and NodeModel(tmp_path, dim=prep.dim, run=RUN).version == 1
    assert server.send(node, write) and node.version == 2  # the server's next delta, from version 1
    assert_scores_as_the_server(tmp_path, server, scenario)


def test_a_bad_delta_or_a_nameless_class_writes_nothing(prep, tmp_path):
    scenario = scenario_with(prep, "ncm")
    server, write = Server(prep, scenario), writer(prep, scenario)
    node = NodeModel(tmp_path, dim=prep.dim, run=RUN)
    server.merge([0, 1])
    delta = server.versions.delta(server.stats, 0)
    with pytest.raises(ValueError, match="sums has shape"):
        node.update({**delta, "sums": delta["sums"][:, :3]}, {0: "a", 1: "b"}, 0, 1, write)
    with pytest.raises(ValueError, match=r"no class name for class ids \[1\]"):
        node.update(delta, {0: "a"}, 0, 1, write)
    with pytest.raises(ValueError, match="versions must grow"):
        node.update(delta, {0: "a", 1: "b"}, 0, 0, write)
    assert node.version == 0 and not tmp_path.joinpath(MODEL).exists() and not tmp_path.joinpath(MERGED).exists()


@pytest.mark.parametrize("damage", [
    lambda f: (f / MERGED / STATE_FILE).write_text("{not json"),
    lambda f: (f / MERGED / STATS_FILE).write_bytes((f / MERGED / STATS_FILE).read_bytes()[:-10]),
    lambda f: (f / MERGED / STATE_FILE).write_text(json.dumps({"run": RUN, "version": 1})),
    lambda f: (f / MODEL / "manifest.json").unlink(),
])
def test_a_damaged_node_folder_is_read_as_version_zero_with_a_warning(damage, prep, tmp_path, capsys):
    scenario = scenario_with(prep, "ncm")
    server, write = Server(prep, scenario), writer(prep, scenario)
    server.merge([0, 1])
    server.send(NodeModel(tmp_path, dim=prep.dim, run=RUN), write)
    capsys.readouterr()
    damage(tmp_path)
    node = NodeModel(tmp_path, dim=prep.dim, run=RUN)
    err = capsys.readouterr().err
    assert (node.version, node.names, node.stats) == (0, {}, None)
    assert err.startswith("warning: ") and err.count("\n") == 1
    # the server then sends everything, and the node is whole again
    assert server.send(node, write) and NodeModel(tmp_path, dim=prep.dim, run=RUN).version == 1


def test_another_runs_or_another_sizes_model_is_not_used(prep, tmp_path, capsys):
    scenario = scenario_with(prep, "ncm")
    server, write = Server(prep, scenario), writer(prep, scenario)
    server.merge([0, 1])
    server.send(NodeModel(tmp_path, dim=prep.dim, run=RUN), write)
    assert NodeModel(tmp_path, dim=prep.dim, run="run-b").version == 0
    assert capsys.readouterr().err == ""
    assert NodeModel(tmp_path, dim=prep.dim + 1, run=RUN).version == 0


def test_class_names_are_indexed_by_id():
    names = ClassNames({2: "b", 0: "a"})
    assert names.class_names == ("a", "", "b") and names.groups == ("site",) * 3
    assert ClassNames({}).class_names == ()
