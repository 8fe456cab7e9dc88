"""Sites under privacy.dp: every site noises every class of the vocabulary every round, a
class enters the model once its merged count stands above the noise, and the budget is spent
one release a round (in the clear, and under secure aggregation)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrecon.model.model import load_model
from tests.conftest import SITE_CLASSES
from tests.test_sites import Rounds, copy_sites, scenario
from tests.test_strategy import identity  # noqa: F401 (fixture: messages built outside a Flower app)

pytest.importorskip("dp_accounting")


@pytest.mark.parametrize("secure", [False, True], ids=["clear", "secure"])
def test_noised_sites_spend_the_budget_and_model_only_the_classes_held(site_folders, tmp_path, secure, monkeypatch):
    # the noise drawn from a seeded generator here, so that the accuracy below is the same every run
    # (a run draws it fresh: fedrecon.dp.add_noise's default)
    from fedrecon import dp

    draw, rng = dp.add_noise, np.random.default_rng(7)
    monkeypatch.setattr(dp, "add_noise", lambda stats, std, scales=None: draw(stats, std, rng, scales))
    folder = copy_sites(site_folders, tmp_path / "a")
    held = sorted(p.name for k in range(3) for p in (folder / f"site-{k}" / "train").iterdir())
    vocabulary = held + ["nobody-1", "nobody-2", "nobody-3"]
    # enough budget for 5 drawings a class to stand above three rounds of three sites' noise
    privacy = {"dp": {"epsilon": 200.0, "clip": 1.0}, "secure_aggregation": secure}
    run = Rounds(scenario(folder, tmp_path, privacy=privacy, sites={"classes": vocabulary}), tmp_path / "run")
    summary = run.all()
    assert summary["privacy_epsilon"] <= 200.0 * (1 + 1e-9) and summary["releases"] == 3
    assert sorted(run.by_name()) == sorted(vocabulary)  # every slot carries noise
    floor = run.state.sites.count_floor()
    assert floor > 0
    for site in ("site-0", "site-2"):
        model = load_model(folder / site / ".fedrecon" / "model")
        assert sorted(model.names) == held, site  # the classes nobody holds stay below the noise
    rows = run.run.recorder.rows
    # every round adds noise to every class, new data or not: the accuracy falls round by round
    # (0.87 to 0.33 seen over three rounds with fresh noise; 0.93 without noise; chance is 1/15)
    assert all(r["accuracy"] is not None and r["accuracy"] > 0.25 for r in rows)  # 0.31 to 0.53 with this seed
    plain_counts = {n: c for n, (c, _) in run.by_name().items() if n in held}
    assert all(abs(c - 5) < 3 for c in plain_counts.values()) and any(c != 5 for c in plain_counts.values())  # noised
    assert SITE_CLASSES * 3 == len(held)
