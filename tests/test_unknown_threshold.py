"""The unknown-input threshold from the clients' binned training scores: the federated
threshold, and every rejection, equal the ones a single site holding all the training
samples chooses; bad counts are refused and leave the threshold incomplete, not wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecon import protocol as P
from fedrecon.learning.heads import build_head, head_spec
from fedrecon.learning.stats import ClassStats
from fedrecon.model.unknown import SCORE_BINS, UnknownScore, bin_edges, score_counts, threshold_of, unknown_parameters
from fedrecon.scenario import load_scenario
from fedrecon.model import load_model
from server.checkpoint import load_run_state
from server.model_export import export_run
from server.prepare import prepare
from strategies.unknown_threshold import UnknownThreshold
from strategies.wire import from_record
from tests.conftest import small_scenario
from tests.test_run import STAGGERED, run
from tests.test_strategy import DIM, identity, make_strategy, reply_with  # noqa: F401 (identity: autouse fixture)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=1, max_size=200), st.integers(1, 5),
       st.floats(0.01, 0.99))
def test_counts_of_parts_add_up_to_the_counts_of_the_whole_and_the_threshold_keeps_its_quantile(scores, parts, q):
    scores = np.array(scores)
    split = np.array_split(scores, parts)
    assert np.array_equal(sum(score_counts(p) for p in split), score_counts(scores))
    t = threshold_of(score_counts(scores), q)
    kept = (scores <= t).mean()
    assert kept >= q - 1e-12
    # the edge below would keep less than the quantile: the threshold is the smallest edge that does
    below = bin_edges()[bin_edges() < t]
    if len(below):
        assert (scores <= below[-1]).mean() < q


def feature_of(index: np.ndarray) -> np.ndarray:
    """Each sample's fake features, the same wherever the sample is (a client, or one site)."""
    return np.stack([np.random.default_rng(int(i)).normal(size=DIM) + (int(i) // 10 % 3) for i in index])


def learned_reply(msg: Message, spec) -> Message:
    arrays = from_record(msg.content[P.TASK_ARRAYS])
    stats = ClassStats.from_features(arrays["sample_labels"], feature_of(arrays["sample_index"]), spec)
    return reply_with(msg, stats.to_arrays())


def counted_reply(msg: Message, counts: np.ndarray | None = None) -> Message:
    """A client's answer to the threshold query: its samples' scores, binned."""
    if counts is None:
        kind = str(msg.content[P.UNKNOWN_CONFIG]["kind"])
        samples = from_record(msg.content[P.EVAL_ARRAYS])
        score = UnknownScore(kind, from_record(msg.content[P.UNKNOWN_ARRAYS]))
        counts = score_counts(score.training_scores(feature_of(samples["sample_index"]), samples["sample_labels"],
                                                    from_record(msg.content[P.UNKNOWN_CLASSES])))
    bins = np.flatnonzero(counts).astype(np.int32)
    record = {"bins": Array(bins), "counts": Array(counts[bins])} if len(counts) == SCORE_BINS else {"counts": Array(counts)}
    return Message(RecordDict({P.SCORE_COUNTS: ArrayRecord(record)}), reply_to=msg)


def central_threshold(state, rounds: int, quantile: float):
    """One site holding every training sample of the first ``rounds`` rounds: its head, score and threshold."""
    arrivals = [a for a in state.plan.arrivals if a.round <= rounds]
    index = np.concatenate([a.sample_index for a in arrivals])
    labels = np.concatenate([a.sample_labels for a in arrivals])
    s = state.scenario
    stats = ClassStats.from_features(labels, feature_of(index), head_spec(s.merge, s.seed))
    score = UnknownScore(*unknown_parameters(stats, build_head(stats, s.merge, s.seed), s.merge.shrinkage))
    left_out = score.training_scores(feature_of(index), labels, left_out_classes(stats))
    return threshold_of(score_counts(left_out), quantile), score


def left_out_classes(stats: ClassStats) -> dict:
    return {"ids": stats.ids, "counts": stats.counts, "means": stats.means()}


@pytest.mark.parametrize("head", ["ncm", "lda"])
def test_the_federated_threshold_and_every_rejection_equal_one_sites(head):
    s = make_strategy(merge={"head": head}, tasks={"arrival": {"kind": "staggered", "offset": 1}})
    spec = head_spec(s.state.scenario.merge, s.state.scenario.seed)
    for r in (1, 2):
        s.replies(r, [learned_reply(m, spec) for m in s.tasks(r)])
        messages = s.build(UnknownThreshold, r)
        # only the clients that learned something are asked, each for exactly its own samples
        asked = {m.metadata.dst_node_id - 100: from_record(m.content[P.EVAL_ARRAYS])["sample_index"] for m in messages}
        assert {c: sorted(v.tolist()) for c, v in asked.items()} == {
            c: sorted(np.concatenate([a.sample_index for a in s.state.plan.arrivals if a.client == c and a.round <= r]).tolist())
            for c in s.state.trained}
        s.absorb(UnknownThreshold, r, [counted_reply(m) for m in messages])
        expected, central = central_threshold(s.state, r, 0.99)
        got = s.state.unknown[r]
        assert got["threshold"] == expected and got["complete"] and got["clients"] == len(messages)
        assert got["samples"] == sum(len(a.sample_index) for a in s.state.plan.arrivals if a.round <= r)
    # every rejection: the federated score of unseen inputs against its threshold equals one site's
    s_ = s.state.scenario
    federated = UnknownScore(*unknown_parameters(s.state.stats, build_head(s.state.stats, s_.merge, s_.seed), s_.merge.shrinkage))
    inputs = feature_of(np.arange(1000, 1400)) * 1.5
    np.testing.assert_allclose(federated.scores(inputs), central.scores(inputs), rtol=1e-9, atol=1e-9)
    t = s.state.unknown[2]["threshold"]
    assert np.array_equal(federated.scores(inputs) > t, central.scores(inputs) > t)
    assert 0 < (central.scores(inputs) > t).sum() < len(inputs)  # the threshold cuts somewhere


def test_bad_counts_are_refused_and_the_threshold_says_it_is_incomplete():
    s = make_strategy(merge={"head": "lda"})
    spec = head_spec(s.state.scenario.merge, s.state.scenario.seed)
    s.replies(1, [learned_reply(m, spec) for m in s.tasks(1)])
    messages = s.build(UnknownThreshold, 1)
    inflated = score_counts(np.zeros(3)) * 100  # more samples than the client holds
    wrong_size = np.zeros(SCORE_BINS - 1, np.int64)
    s.absorb(UnknownThreshold, 1, [counted_reply(messages[0], inflated), counted_reply(messages[1], wrong_size),
                                   counted_reply(messages[2])])
    got = s.state.unknown[1]
    assert got["clients"] == 1 and not got["complete"] and len(got["problems"]) == 2
    # a dense reply of every bin is refused unread: larger than the most the samples can fill
    assert "not the" in got["problems"][0] and "bytes of arrays, more than" in got["problems"][1]
    assert got["samples"] == len(from_record(messages[2].content[P.EVAL_ARRAYS])["sample_index"])


def test_a_run_keeps_each_evaluated_rounds_threshold_equal_to_one_sites(write_scenario, tmp_path):
    path = write_scenario(small_scenario(tasks=STAGGERED, merge={"head": "lda"}))
    summary = run(path, tmp_path / "run")
    assert summary["failures"] == 0
    done, _, state = load_run_state(tmp_path / "run")
    prep = prepare(load_scenario(path))
    from fedrecon.backbones.embed import embed

    s = prep.scenario
    for r in range(1, done + 1):
        arrivals = [a for a in prep.plan.arrivals if a.round <= r]
        index = np.concatenate([a.sample_index for a in arrivals])
        labels = np.concatenate([a.sample_labels for a in arrivals])
        features = embed(prep.model, prep.dataset.inputs[index])
        stats = ClassStats.from_features(labels, features, head_spec(s.merge, s.seed))
        score = UnknownScore(*unknown_parameters(stats, build_head(stats, s.merge, s.seed), s.merge.shrinkage))
        got = state["server"]["unknown"][str(r)]
        assert got["complete"] and got["samples"] == len(index)
        left_out = score.training_scores(features, labels, left_out_classes(stats))
        assert got["threshold"] == threshold_of(score_counts(left_out), s.unknown.quantile)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["unknown_threshold"] for r in rows] == [state["server"]["unknown"][str(r["round"])]["threshold"] for r in rows]
    # the export ships the last round's threshold, and says how it was chosen; a user's replaces it
    manifest = export_run(tmp_path / "run", tmp_path / "model")
    chosen = state["server"]["unknown"][str(done)]
    assert manifest["unknown"] == {"kind": "relative_mahalanobis", "threshold": chosen["threshold"],
                                   "chosen_by": "federation", "quantile": 0.99, "samples": chosen["samples"],
                                   "complete": True}
    model = load_model(tmp_path / "model")
    test, _ = prep.plan.test_set(prep.plan.classes_seen(done))
    inputs = np.concatenate([prep.dataset.inputs[test], prep.dataset.inputs[test][:, ::-1, ::-1] * 0 + 1.0])
    predictions = model.predict(inputs)
    rejected = np.array([p["label"] == "unknown" for p in predictions])
    assert np.array_equal(rejected, np.array([p["unknown_score"] for p in predictions]) > chosen["threshold"])
    assert rejected[len(test):].all()  # a blank image is unknown
    assert export_run(tmp_path / "run", tmp_path / "mine", unknown_threshold=3.5)["unknown"]["chosen_by"] == "user"


def test_under_differential_privacy_no_threshold_is_chosen_and_the_export_says_why(write_scenario, tmp_path):
    dp = {"dp": {"epsilon": 8.0, "delta": 1e-5, "clip": 1.0}}
    path = write_scenario(small_scenario(tasks=STAGGERED, merge={"head": "ncm"}, privacy=dp))
    run(path, tmp_path / "run")
    manifest = export_run(tmp_path / "run", tmp_path / "model")
    assert manifest["unknown"]["threshold"] is None and "privacy.dp" in manifest["unknown"]["why"]


def test_under_secure_aggregation_the_threshold_is_the_one_in_the_clear(write_scenario, tmp_path):
    thresholds = {}
    for name, privacy in (("clear", {}), ("secure", {"secure_aggregation": True})):
        path = write_scenario(small_scenario(tasks=STAGGERED, merge={"head": "lda"}, privacy=privacy), name=f"{name}.yaml")
        assert run(path, tmp_path / name)["failures"] == 0
        _, _, state = load_run_state(tmp_path / name)
        thresholds[name] = state["server"]["unknown"]
    assert thresholds["secure"] == thresholds["clear"] and all(u["complete"] for u in thresholds["clear"].values())


@pytest.mark.parametrize("head", ["ncm", "lda"])
def test_a_training_samples_score_leaves_it_out_of_its_class_mean(head):
    s = make_strategy(merge={"head": head}).state.scenario
    rng = np.random.default_rng(0)
    labels = np.array([3, 3, 3, 5, 5, 8, 8, 8, 8, 9])  # class 9: one sample, nothing to leave it with
    features = rng.normal(size=(len(labels), DIM)) + labels[:, None] % 3
    stats = ClassStats.from_features(labels, features, head_spec(s.merge, s.seed))
    score = UnknownScore(*unknown_parameters(stats, build_head(stats, s.merge, s.seed), s.merge.shrinkage))
    got = score.training_scores(features, labels, left_out_classes(stats))
    for i, (x, y) in enumerate(zip(features, labels)):
        # by hand: the score's arrays with the sample's own class mean recomputed without it
        others = [c for c in stats.ids if c != y]
        means = {c: features[labels == c].mean(0) for c in others}
        if (labels == y).sum() > 1:
            means[y] = np.delete(features, i, 0)[np.delete(labels, i) == y].mean(0)
        if score.kind == "cosine":
            unit = x / np.linalg.norm(x)
            expected = 1 - max(unit @ m / np.linalg.norm(m) for m in means.values())
        else:
            p, g = score.arrays["precision"], x - score.arrays["global_mean"]
            expected = min((x - m) @ p @ (x - m) for m in means.values()) - g @ score.arrays["global_precision"] @ g
        assert got[i] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert (got >= score.scores(features) - 1e-9).all()  # never closer than with itself in its mean


def test_under_adapters_only_the_last_round_chooses_a_threshold_unless_told_otherwise():
    from tests.test_strategy_adapters import SHAPES

    adapters = {"merge": {"adapters": "ffa"}, "adapters": {"schedule": "first_task", "rank": 2}}
    for rounds, expected in (("auto", [0, 1]), ("evaluated", [1, 1]), ("last", [0, 1])):
        s = make_strategy(adapter_shapes=SHAPES, unknown={"rounds": rounds}, **adapters)
        last = s.state.plan.rounds
        for r in range(1, last + 1):
            s.replies(r, [learned_reply(m, head_spec(s.state.scenario.merge, 0)) for m in s.tasks(r)])
        phase = s.phase(UnknownThreshold)
        assert [phase.exchanges(s.state, s.work(r)) for r in (last - 1, last)] == expected, rounds
    plain = make_strategy()
    plain.replies(1, [learned_reply(m, None) for m in plain.tasks(1)])
    assert plain.phase(UnknownThreshold).exchanges(plain.state, plain.work(1)) == 1  # frozen: every evaluated round
