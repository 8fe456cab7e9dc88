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

from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.backbones.embed import pick_device
from fedrecon.learning.heads import fit_head
from fedrecon.scenario import load_scenario
from server.prepare import prepare


def pooled_features(path: str):
    scenario = load_scenario(path)
    prep = prepare(scenario)
    plan = prep.plan
    cache = EmbeddingCache(prep.digest, prep.dataset.fingerprint, scenario.model.embedding_cache)
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
        print(f"{scenario.name}: {len(y)} training and {len(ty)} test samples, {len(np.unique(y))} classes "
              f"(features in {seconds:.1f} s)", flush=True)
        runs = ([("ridge", {"ridge_lambda": lam}) for lam in args.sweep] if args.sweep
                else [("ncm", {}), ("ncm", {"metric": "cosine"}), ("lda", {}), ("ridge", {})])
        for head, change in runs:
            # model_copy, not the YAML checks: the scenario's own head keys stay beside the tried head's
            merge = scenario.merge.model_copy(update={"head": head, **change})
            start = time.time()
            accuracy = float((fit_head(y, x, merge, scenario.seed).predict(tx) == ty).mean())
            print(json.dumps({"scenario": scenario.name, "head": head, **change, "centralized_accuracy": round(accuracy, 4),
                              "seconds": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
