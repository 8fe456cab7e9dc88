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

from clients.learner import state_digest
from fedrecon.backbones import pick_device, state_to_numpy
from fedrecon.cache import EmbeddingCache, embed_samples
from fedrecon.evaluate import head_settings
from fedrecon.heads import build_head
from fedrecon.scenario import load_scenario
from server.federation import prepare
from strategies.policies import replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--heads", nargs="*", default=["ncm", "lda", "ridge"])
    args = parser.parse_args()
    scenario = load_scenario(args.scenario, args.set)
    prep = prepare(scenario)
    plan = prep.plan
    cache = EmbeddingCache(state_digest(state_to_numpy(prep.model)), prep.dataset.fingerprint, scenario.model.embedding_cache)
    test, test_labels = plan.test_set(plan.classes_seen(plan.rounds))
    used = np.unique(np.concatenate([test, *(a.sample_index for a in plan.arrivals)]))
    features = np.zeros((len(prep.dataset.labels), prep.dim))
    features[used] = embed_samples(prep.model, prep.dataset, used, pick_device(scenario.model.device), cache)
    revisits = sum(len(a.revisits) for a in plan.arrivals)
    sizes = [sum(len(a.sample_index) for a in plan.arrivals if a.client == c) for c in range(plan.clients)]
    print(f"{scenario.name}: {len(plan.arrivals)} arrivals, {revisits} revisits, client sizes {sizes}")
    for head in args.heads:
        settings = head_settings(scenario).__class__(**{**head_settings(scenario).__dict__, "head": head})
        row = {"head": head}
        for policy in ("exact", "fedrecon", "fedproto"):
            merged = replay(plan, features, policy, settings.spec())
            row[policy] = round(float((build_head(merged, settings).predict(features[test]) == test_labels).mean()), 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
