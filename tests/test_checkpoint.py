"""Checkpoints keep every statistic a head needs and the state of the merge policy."""

import numpy as np

from fedrecon.learning.heads import head_spec
from fedrecon.learning.prototype_merges import make_policy, policy_state, restore_policy
from fedrecon.learning.stats import ClassStats
from fedrecon.scenario.sections import MergeConfig
from server.checkpoint import load_parts, load_run_state, save_run_state


def test_second_order_statistics_survive_a_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    labels, feats = rng.integers(0, 5, 40), rng.normal(size=(40, 6))
    for head in ("lda", "ridge"):
        spec = head_spec(MergeConfig(head=head, random_features=8), 3)
        stats = ClassStats.from_features(labels, feats, spec)
        save_run_state(tmp_path, 4, stats, {"note": head})
        done, loaded, state = load_run_state(tmp_path)
        assert (done, state) == (4, {"note": head})
        for key, value in stats.to_arrays().items():
            assert loaded.to_arrays()[key].tobytes() == value.tobytes(), (head, key)


def test_fedproto_counts_of_contributions_survive_a_checkpoint():
    rng = np.random.default_rng(1)
    updates = [ClassStats.from_features(np.array([1, 1, 2]), rng.normal(size=(3, 2))) for _ in range(3)]
    straight = make_policy("fedproto")
    merged = straight.merge(straight.merge(ClassStats.empty(2), updates[:2]), updates[2:])

    first = make_policy("fedproto")
    halfway = first.merge(ClassStats.empty(2), updates[:2])
    resumed = make_policy("fedproto")
    restore_policy(resumed, policy_state(first))
    again = resumed.merge(halfway, updates[2:])
    np.testing.assert_array_equal(again.sums, merged.sums)
    assert policy_state(make_policy("exact")) == {}


def test_per_client_statistics_survive_a_checkpoint(tmp_path):
    rng = np.random.default_rng(2)
    parts = {c: ClassStats.from_features(rng.integers(0, 4, 10), rng.normal(size=(10, 3))) for c in (0, 7)}
    union = ClassStats.from_features(np.arange(3), np.ones((3, 3)))
    save_run_state(tmp_path, 2, union, {}, parts)
    _, loaded, _ = load_run_state(tmp_path)
    assert loaded.ids.tolist() == [0, 1, 2]
    again = load_parts(tmp_path)
    assert sorted(again) == [0, 7]
    for c in parts:
        np.testing.assert_array_equal(again[c].sums, parts[c].sums)


def test_a_crash_while_writing_leaves_the_last_checkpoint_whole(tmp_path, monkeypatch):
    stats = ClassStats.from_features(np.array([0, 1]), np.eye(2))
    save_run_state(tmp_path, 1, stats, {"note": "first"})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    try:
        save_run_state(tmp_path, 2, stats, {"note": "second"})
    except OSError:
        pass
    monkeypatch.undo()
    done, _, state = load_run_state(tmp_path)
    assert (done, state) == (1, {"note": "first"})
