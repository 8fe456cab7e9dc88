"""Checkpoints keep every statistic a head needs and the state of the merge policy; earlier
rounds' states are kept as ``checkpoints.keep`` says, and one damaged is refused in one line."""

import numpy as np
import pytest

from fedrecon.learning.heads import head_spec
from fedrecon.learning.prototype_merges import make_policy, policy_state, restore_policy
from fedrecon.learning.stats import ClassStats
from fedrecon.scenario.sections import MergeConfig
from server.checkpoint import CheckpointError, load_parts, load_run_state, round_path, save_run_state


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


def save_rounds(run_dir, keep: str, rounds: int = 3, dim: int = 4) -> list[ClassStats]:
    """``rounds`` rounds' checkpoints, two new classes a round, as a run writes them."""
    rng, saved = np.random.default_rng(3), []
    for done in range(1, rounds + 1):
        saved.append(ClassStats.from_features(np.arange(2 * done), rng.normal(size=(2 * done, dim))))
        save_run_state(run_dir, done, saved[-1], {"rows": [{"round": r} for r in range(1, done + 1)]}, keep=keep)
    return saved


def test_every_rounds_state_is_kept_and_resuming_still_reads_the_last(tmp_path):
    import os

    saved = save_rounds(tmp_path, "every")
    for done, stats in enumerate(saved, 1):
        got, loaded, state = load_run_state(tmp_path, round=done)
        assert got == done and state == {"rows": [{"round": r} for r in range(1, done + 1)]}
        np.testing.assert_array_equal(loaded.sums, stats.sums)
    done, loaded, state = load_run_state(tmp_path)  # what --resume reads: the last, its state as written
    assert done == 3 and set(state) == {"rows"} and loaded.ids.tolist() == list(range(6))
    # a kept round is its checkpoint file, linked, not copied; the next round's is a new file
    assert os.path.samefile(round_path(tmp_path, 3), tmp_path / "checkpoint.npz")
    assert not os.path.samefile(round_path(tmp_path, 2), tmp_path / "checkpoint.npz")


def test_last_keeps_no_earlier_round_and_says_what_to_set(tmp_path):
    save_rounds(tmp_path, "last")
    assert not (tmp_path / "rounds").exists() and load_run_state(tmp_path, round=3)[0] == 3
    with pytest.raises(CheckpointError) as refused:
        load_run_state(tmp_path, round=2)
    assert str(refused.value) == (f"{tmp_path}: round 2 is not kept (checkpoints.keep is last; the folder holds only "
                                  "the last, 3); set checkpoints.keep: every in the scenario to keep every round")
    with pytest.raises(CheckpointError, match=r"round 4 was not run \(the run's rounds: 1-3\)$"):
        load_run_state(tmp_path, round=4)


def test_auto_keeps_rounds_while_they_fit_its_budget_then_the_last_only(tmp_path, monkeypatch):
    # rounds of 8, 16, 24 and 32 kB of class sums; 30 kB fit the first two
    monkeypatch.setattr("server.checkpoint.KEEP_AUTO_MB", 0.03)
    saved = save_rounds(tmp_path, "auto", rounds=4, dim=500)
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == ["round-001.npz", "round-002.npz"]
    for done in (1, 2, 4):
        np.testing.assert_array_equal(load_run_state(tmp_path, round=done)[1].sums, saved[done - 1].sums)
    with pytest.raises(CheckpointError, match=r"round 3 is not kept \(checkpoints.keep: auto keeps rounds while they "
                                              r"take at most 0.03 MB in all; the folder holds rounds 1-2 and the "
                                              r"last, 4\); set checkpoints.keep: every"):
        load_run_state(tmp_path, round=3)


def test_a_kept_round_altered_cut_short_renamed_or_missing_is_refused_in_one_line(tmp_path):
    save_rounds(tmp_path, "every")
    first = round_path(tmp_path, 1)
    with np.load(first) as npz:
        members = {k: npz[k] for k in npz.files}
    members["sums"] = members["sums"] + 1  # a whole npz, its digest the one written
    np.savez(first, **members)
    blob = round_path(tmp_path, 2).read_bytes()
    round_path(tmp_path, 2).write_bytes(blob[: len(blob) // 2])
    for done, why in [(1, "round-001.npz: altered (its digest is not the one written with round 1's state)"),
                      (2, "round-002.npz: not a whole checkpoint (BadZipFile: ")]:
        with pytest.raises(CheckpointError) as refused:
            load_run_state(tmp_path, round=done)
        assert why in str(refused.value) and "\n" not in str(refused.value)
    round_path(tmp_path, 2).write_bytes((tmp_path / "checkpoint.npz").read_bytes())
    with pytest.raises(CheckpointError, match=r"round-002.npz: holds round 3's state, not round 2's \(renamed\?\)"):
        load_run_state(tmp_path, round=2)
    first.unlink()
    with pytest.raises(CheckpointError, match=r"round-001.npz: missing \(the run kept round 1's state there\); "
                                              r"restore it, or export another round: rounds 2-3$"):
        load_run_state(tmp_path, round=1)
