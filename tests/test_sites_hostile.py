"""Site replies a site could forge, refused by the server's check."""

from __future__ import annotations

import numpy as np
import pytest

from fedrecon.learning.stats import ClassStats
from tests.test_sites import Rounds, copy_sites, scenario
from tests.test_strategy import identity  # noqa: F401 (fixture: messages built outside a Flower app)


def test_hostile_site_replies_are_refused_and_change_nothing(site_folders, tmp_path):
    """Replies a site could forge: each refused in one line by the server's check, the merged statistics untouched."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedrecon import protocol as P
    from strategies.sites import checked_offer
    from strategies.validation import PayloadError
    from strategies.wire import to_record

    run = Rounds(scenario(copy_sites(site_folders, tmp_path / "a"), tmp_path, sites={"classes": ["a", "b", "c"]}),
                 tmp_path / "run")
    state, dim = run.state, run.state.dim
    good = ClassStats.from_features(np.array([0, 0, 1]), np.random.default_rng(0).normal(size=(3, dim)))

    def reply(names, samples, arrays=None, task="t1", **config):
        content = RecordDict({P.SITE_TASK: ConfigRecord({"task": task, "names": names, "samples": samples, **config})})
        if arrays is not None:
            content[P.STATS] = to_record(arrays)
        return Message(content, dst_node_id=1, message_type="train")

    arrays = good.to_arrays()
    task, stats, names = checked_offer(state, reply(["a", "b"], 3, arrays), 0)
    assert task == "t1" and list(stats.counts) == [2.0, 1.0] and names == ["a", "b"]
    nan = {**arrays, "sums": np.full_like(arrays["sums"], np.nan)}
    cases = {
        "not in sites.classes": reply(["a", "zebra"], 3, arrays),
        "names a class twice": reply(["a", "a"], 3, arrays),
        "add up to 3, not the 4": reply(["a", "b"], 4, arrays),
        "NaN": reply(["a", "b"], 3, nan),
        "one value for each of the 3": reply(["a", "b", "c"], 3, arrays),
        "at most 10000": reply(["a"] * 10_001, 3, arrays),
        "no ArrayRecord": reply(["a", "b"], 3),
        "site data: broken.png": reply([], 0, error="broken.png: not a readable image"),
        "whole number": reply(["a", "b"], -1, arrays),
    }
    before = state.stats.to_arrays()
    for expected, message in cases.items():
        with pytest.raises(PayloadError, match=expected.split(":")[0]) as caught:
            checked_offer(state, message, 0)
        assert "\n" not in str(caught.value)
    state.sites.accept(0, "t1")
    assert checked_offer(state, reply(["a", "b"], 3, arrays), 0)[1] is None  # merged once: never again
    assert all(np.array_equal(v, state.stats.to_arrays()[k]) for k, v in before.items())
