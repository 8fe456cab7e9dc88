"""Two tiers (fedrecon/plan/edges.py, strategies/edges.py, server/edge_runs.py): edges inside
one run, and separate edge runs added by ``fedrecon merge``, both end where the flat
federation over the same arrivals ends; what cannot be added is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from flwr.supercore.task_identity import TaskIdentity

from server.cli import main
from server.edge_runs import merge_runs
from tests.conftest import small_scenario
from tests.test_run import ending, run

# 3 clients, 12 classes, each class held by two clients: classes cross the edges
SHARED = {**small_scenario()["tasks"], "split": {"kind": "overlap", "shared": 1.0, "among": 2}}


def scenario(**clients) -> dict:
    # no threshold exchange: an edge's own run makes none, and the bytes compared are the statistics'
    return small_scenario(tasks=SHARED, clients={"count": 3, **clients}, unknown={"quantile": None})


@pytest.fixture(autouse=True, scope="module")
def identity():
    """Messages built outside a Flower app need a task identity."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


@pytest.fixture(scope="module")
def flat(tmp_path_factory, identity):
    folder = tmp_path_factory.mktemp("flat")
    path = folder / "flat.yaml"
    path.write_text(yaml.safe_dump(scenario()))
    summary = run(path, folder / "run")
    return summary, ending(folder / "run")["stats"]


def assert_same_stats(got: dict, want: dict) -> None:
    np.testing.assert_array_equal(got["ids"], want["ids"])
    np.testing.assert_array_equal(got["counts"], want["counts"])
    np.testing.assert_allclose(got["sums"], want["sums"], rtol=1e-12)  # sums added in another order


def test_edges_in_one_run_end_like_the_flat_run_and_count_the_top_tier(flat, write_scenario, tmp_path):
    summary, stats = flat
    edged = run(write_scenario(scenario(edges=2)), tmp_path / "edged")
    got = ending(tmp_path / "edged")
    assert_same_stats(got["stats"], stats)
    assert edged["final_accuracy"] == summary["final_accuracy"]
    assert edged["bytes_up"] == summary["bytes_up"] and edged["edges"] == 2
    assert all(row["bytes_up_top"] > 0 for row in got["rows"])
    assert edged["bytes_up_top"] == sum(row["bytes_up_top"] for row in got["rows"])


def test_edge_runs_merged_equal_the_flat_run(flat, write_scenario, tmp_path, capsys):
    summary, stats = flat
    runs = []
    for edge in (0, 1):
        out = tmp_path / f"edge{edge}"
        alone = run(write_scenario(scenario(edges=2, edge=edge), f"edge{edge}.yaml"), out)
        clients = {a["client"] for a in json.loads((out / "plan.json").read_text())["arrivals"]}
        assert alone["edge"] == edge and clients == ({0, 1} if edge == 0 else {2})  # client c: edge c * 2 // 3
        assert "bytes_up_top" not in alone  # an edge's own run has no top tier: merge counts what the edges send
        runs.append(out)
    assert main(["merge", *map(str, runs), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    with np.load(tmp_path / "merged" / "stats.npz") as npz:
        assert_same_stats({k: npz[k] for k in npz.files}, stats)
    assert merged["final_accuracy"] == summary["final_accuracy"]
    assert merged["classes_learned"] == summary["classes_learned"] and merged["missing_edges"] == []
    assert merged["bytes_up"] == summary["bytes_up"]
    assert "final accuracy" in capsys.readouterr().out


def test_merge_refuses_runs_that_cannot_be_added(write_scenario, tmp_path, capsys, flat):
    edge = run(write_scenario(scenario(edges=2, edge=0), "e0.yaml"), tmp_path / "e0")
    other = small_scenario(tasks=SHARED, clients={"count": 3, "edges": 2, "edge": 1}, merge={"prototypes": "exact", "head": "lda"})
    run(write_scenario(other, "e1.yaml"), tmp_path / "e1")
    assert edge["edge"] == 0
    cases = {
        (tmp_path / "e0", tmp_path / "e0"): "edge 0 again",
        (tmp_path / "e0", tmp_path / "e1"): "merge.head ('lda', not 'ncm')",
        (tmp_path / "e0", tmp_path / "nothing"): "no scenario.json",
    }
    for runs, why in cases.items():
        assert main(["merge", *map(str, runs), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing written for a refused merge
    # the same scenario's edge 1, as if its backbone's weights had been others
    run(write_scenario(scenario(edges=2, edge=1), "e1b.yaml"), tmp_path / "e1b")
    summary = json.loads((tmp_path / "e1b" / "summary.json").read_text())
    (tmp_path / "e1b" / "summary.json").write_text(json.dumps({**summary, "backbone_digest": "0" * 16}))
    assert main(["merge", str(tmp_path / "e0"), str(tmp_path / "e1b"), "--out", str(tmp_path / "out")]) == 2
    assert "backbones differ" in capsys.readouterr().err and not (tmp_path / "out").exists()
    # an edge missing: merged, with a warning
    assert main(["merge", str(tmp_path / "e0"), "--out", str(tmp_path / "out")]) == 0
    assert "warning: edges [1] not given" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["missing_edges"] == [1]


@pytest.mark.parametrize("clients, merge, why", [
    ({"edges": 2}, {"prototypes": "fedproto"}, "clients.edges: merge.prototypes fedproto is not a sum"),
    ({"edge": 0}, {}, "clients.edge: needs clients.edges of 2 or more"),
    ({"edges": 2, "edge": 2}, {}, "clients.edge: edge 2 of 2: allowed 0 to 1"),
    ({"edges": 4}, {}, "clients.edges: 4 edges for 3 clients"),
])
def test_edges_that_would_not_be_exact_are_refused(write_scenario, capsys, clients, merge, why):
    raw = small_scenario(clients={"count": 3, **clients}, merge={"prototypes": "exact", **merge})
    assert main(["validate", str(write_scenario(raw))]) != 0
    err = capsys.readouterr().err
    assert why in err, err
