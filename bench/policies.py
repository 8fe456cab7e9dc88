"""Accuracy of each merge policy and head on a scenario with revisits and unequal clients.

Replays the scenario's plan through each policy (no Flower: the merges are the
server's, the features the frozen backbone's, from the embedding cache) and scores
every head on the plan's test samples.

    python bench/policies.py scenarios/hwu64-dirichlet.yaml --set tasks.train_shots=20 \\
        --set tasks.revisits='{fraction: 0.5, shots: 10, after: 1}' --set rounds=6
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from fedrecon.backbones.cache import EmbeddingCache, embed_samples
from fedrecon.backbones.embed import pick_device
from fedrecon.learning.heads import build_head, head_spec
from fedrecon.learning.prototype_merges import replay
from fedrecon.scenario import load_scenario
from server.prepare import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--heads", nargs="*", default=["ncm", "lda", "ridge"])
    args = parser.parse_args()
    scenario = load_scenario(args.scenario, args.set)
    prep = prepare(scenario)
    plan = prep.plan
    cache = EmbeddingCache(prep.digest, prep.dataset.fingerprint, scenario.model.embedding_cache)
    test, test_labels = plan.test_set(plan.classes_seen(plan.rounds))
    used = np.unique(np.concatenate([test, *(a.sample_index for a in plan.arrivals)]))
    features = np.zeros((len(prep.dataset.labels), prep.dim))
    features[used] = embed_samples(prep.model, prep.dataset, used, pick_device(scenario.model.device), cache)
    revisits = sum(len(a.revisits) for a in plan.arrivals)
    sizes = [sum(len(a.sample_index) for a in plan.arrivals if a.client == c) for c in range(plan.clients)]
    print(f"{scenario.name}: {len(plan.arrivals)} arrivals, {revisits} revisits, client sizes {sizes}")
    for head in args.heads:
        merge = scenario.merge.model_copy(update={"head": head})
        row = {"head": head}
        for policy in ("exact", "fedrecon", "fedproto"):
            merged = replay(plan, features, policy, head_spec(merge, scenario.seed))
            row[policy] = round(float((build_head(merged, merge, scenario.seed).predict(features[test]) == test_labels).mean()), 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
