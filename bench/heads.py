"""Centralized ceilings of every head on a scenario's data, and the ridge lambda sweep.

The ceiling of a head is the head fitted at one site on every training sample the
scenario's plan deals out, scored on the plan's test samples (all classes at once).
Features come from the scenario's embedding cache, so this also warms it for runs.

    python bench/heads.py scenarios/clinc150-domains.yaml scenarios/hwu64-dirichlet.yaml
    python bench/heads.py scenarios/clinc150-domains.yaml --sweep 1 10 100 1000 10000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from clients.learner import state_digest
from fedrecon.backbones import pick_device, state_to_numpy
from fedrecon.cache import EmbeddingCache, embed_samples
from fedrecon.evaluate import head_settings
from fedrecon.heads import fit_head
from fedrecon.scenario import load_scenario
from server.federation import prepare


def pooled_features(path: str):
    scenario = load_scenario(path)
    prep = prepare(scenario)
    plan = prep.plan
    cache = EmbeddingCache(state_digest(state_to_numpy(prep.model)), prep.dataset.fingerprint, scenario.model.embedding_cache)
    device = pick_device(scenario.model.device)
    train = np.concatenate([a.sample_index for a in plan.arrivals])
    labels = np.concatenate([a.sample_labels for a in plan.arrivals])
    test, test_labels = plan.test_set(plan.classes_seen(plan.rounds))
    start = time.time()
    x_train = embed_samples(prep.model, prep.dataset, train, device, cache)
    x_test = embed_samples(prep.model, prep.dataset, test, device, cache)
    return scenario, labels, x_train, test_labels, x_test, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="+")
    parser.add_argument("--sweep", type=float, nargs="*", help="ridge lambdas to try (instead of the three heads)")
    args = parser.parse_args()
    for path in args.scenarios:
        scenario, y, x, ty, tx, seconds = pooled_features(path)
        base = head_settings(scenario)
        print(f"{scenario.name}: {len(y)} training and {len(ty)} test samples, {len(np.unique(y))} classes "
              f"(features in {seconds:.1f} s)", flush=True)
        runs = ([("ridge", {"ridge_lambda": lam}) for lam in args.sweep] if args.sweep
                else [("ncm", {}), ("ncm", {"metric": "cosine"}), ("lda", {}), ("ridge", {})])
        for head, change in runs:
            settings = base.__class__(**{**base.__dict__, "head": head, **change})
            start = time.time()
            accuracy = float((fit_head(y, x, settings).predict(tx) == ty).mean())
            print(json.dumps({"scenario": scenario.name, "head": head, **change, "centralized_accuracy": round(accuracy, 4),
                              "seconds": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
