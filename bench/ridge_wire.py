"""The ridge head's Gram on the wire: what a cheaper encoding of a reply's Gram buys.

A reply of the ridge head carried the Gram ``G = H^T H`` of its samples' random ReLU
features ``H`` (``n x M``, M = ``merge.random_features``) as a float64 upper triangle,
``M (M + 1) / 2`` values whatever ``n``. Measured here, per reply of a scenario's plan
(the frozen backbone's features of each arrival, as its client computes them):

- the float64 triangle (before);
- a float32 triangle: half the bytes, rounded (accumulated in float64 at the server): not adopted;
- what replies send now (``ClassStats.to_arrays``): the rank factor ``L`` (``r x M``,
  ``L^T L = G``, a function of ``G`` alone: ``fedrecon.learning.stats.gram_factor``) when
  the reply has at most M/4 samples, else the triangle.

For each: bytes a reply (median, largest) and in the plan's heaviest round, the merged
Gram's largest deviation relative to its largest entry, and the accuracy of the ridge head
built from the merged statistics (same test samples), with the test predictions that
differ from the float64 triangle's. Writes the "ridge-wire" section of docs/benchmarks.md:

    .venv/bin/python bench/ridge_wire.py [--no-doc]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from fedrecon.backbones.cache import EmbeddingCache, embed_samples  # noqa: E402
from fedrecon.backbones.embed import pick_device  # noqa: E402
from fedrecon.learning.heads import build_head, head_spec  # noqa: E402
from fedrecon.learning.stats import ClassStats, add_stats  # noqa: E402
from fedrecon.scenario import load_scenario  # noqa: E402
from server.prepare import prepare  # noqa: E402
from server.report import human_bytes  # noqa: E402

BEFORE = "float64 triangle (before)"
NOW = "now: rank factor up to M/4 samples, else the triangle"
def omniglot(clients: int, num_classes: int, per_task: int, shots: int, **tasks) -> dict:
    """An Omniglot scenario on the committed conv4 with the ridge head (absolute paths)."""
    return {"name": "ridge-wire", "seed": 1,
            "data": {"dataset": "omniglot", "root": str((REPO.parent / "shared" / "data").resolve()),
                     "subset": "evaluation", "image_size": 28},
            "model": {"backbone": "conv4", "checkpoint": str(REPO / "checkpoints" / "conv4-omniglot.pt"), "device": "cpu"},
            "clients": {"count": clients},
            "tasks": {"num_classes": num_classes, "classes_per_task": per_task, "train_shots": shots, "test_shots": 5, **tasks},
            "merge": {"prototypes": "exact", "head": "ridge"}}


SCENARIOS = {
    "CLINC150 by domain (10 clients, 100 sentences a class)": (REPO / "scenarios" / "clinc150-domains.yaml", ["merge.head=ridge"]),
    "Omniglot, the quickstart's plan (5 clients, 4 classes of 15 drawings a task)": omniglot(5, 100, 4, 15),
    "Omniglot, 1,000 clients, each class held by 5, first 100 clients (one class a task, its 10 drawings shared by 5 clients)":
        omniglot(1000, 600, 1, 10, split={"kind": "overlap", "shared": 1.0, "among": 5}),
}


def measure(source, max_clients: int | None) -> dict:
    if isinstance(source, dict):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scenario.yaml"
            path.write_text(yaml.safe_dump(source))
            s = load_scenario(path)
    else:
        s = load_scenario(*source)
    prep = prepare(s)
    plan, m, seed = prep.plan, s.merge.random_features, s.seed
    cache = EmbeddingCache(prep.digest, prep.dataset.fingerprint, s.model.embedding_cache)
    device = pick_device(s.model.device)
    arrivals = [a for a in plan.arrivals if max_clients is None or a.client < max_clients]
    spec = head_spec(s.merge, seed)
    merged, gram32, gram_f = ClassStats.empty(prep.dim), np.zeros((m, m)), np.zeros((m, m))  # added as they come: 128 MB a Gram
    sizes = {BEFORE: [], "float32 triangle (not adopted)": [], NOW: []}
    per_round: dict[int, dict[str, int]] = {}
    triangle = m * (m + 1) // 2
    for a in arrivals:
        x = embed_samples(prep.model, prep.dataset, a.sample_index, device, cache)
        stats = ClassStats.from_features(a.sample_labels, x, spec)
        merged = add_stats([merged, stats]) if len(merged) else stats.replace()
        g = stats.shared["gram"]
        gram32 += g.astype(np.float32).astype(np.float64)
        wire = stats.to_arrays()
        gram_f += ClassStats.from_arrays(wire).shared["gram"]  # as the server reads the reply
        sent = wire["gram_factor"] if "gram_factor" in wire else wire["gram"]
        got = {BEFORE: 8 * triangle, "float32 triangle (not adopted)": 4 * triangle, NOW: sent.nbytes}
        for k, v in got.items():
            sizes[k].append(v)
            per_round.setdefault(a.round, {}).setdefault(k, 0)
            per_round[a.round][k] += v
    seen = np.array(sorted({int(c) for a in arrivals for c in a.classes}))
    index, labels = plan.test_set(seen)
    test = embed_samples(prep.model, prep.dataset, index, device, cache)
    exact = build_head(merged, s.merge, seed).predict(test)  # from the exact Grams the clients computed
    rows = {}
    for name, gram in ((BEFORE, merged.shared["gram"]), ("float32 triangle (not adopted)", gram32), (NOW, gram_f)):
        stats = merged.replace(shared={**merged.shared, "gram": gram})
        pred = build_head(stats, s.merge, seed).predict(test)
        top = np.abs(merged.shared["gram"]).max()
        rows[name] = {"median": statistics.median(sizes[name]), "largest": max(sizes[name]),
                      "round": max(r[name] for r in per_round.values()),
                      "deviation": float(np.abs(gram - merged.shared["gram"]).max() / top),
                      "accuracy": float((pred == labels).mean()), "changed": int((pred != exact).sum()),
                      "test": len(labels)}
    samples = [len(a.sample_labels) for a in arrivals]
    return {"rows": rows, "replies": len(arrivals), "samples": statistics.median(samples), "m": m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    table = ["| scenario | encoding | bytes a reply (median / largest) | heaviest round | merged Gram's deviation | accuracy | predictions changed |",
             "|---|---|---|---|---|---|---|"]
    for title, source in SCENARIOS.items():
        result = measure(source, 100 if "1,000" in title else None)
        print(title, result, flush=True)
        for name, r in result["rows"].items():
            table.append(f"| {title}; {result['replies']} replies, median {result['samples']:.0f} samples | {name} | "
                         f"{human_bytes(r['median'])} / {human_bytes(r['largest'])} | {human_bytes(r['round'])} | {r['deviation']:.1e} | "
                         f"{r['accuracy']:.4f} | {r['changed']} of {r['test']} |")
    text = f"""## The ridge head's Gram on the wire

Command: `.venv/bin/python bench/ridge_wire.py` (each reply of the scenario's plan computed as its client
computes it, M = 4000 random features; "deviation": the largest entry of |merged Gram − the float64 triangles'
merged Gram| over the latter's largest entry; accuracy of the ridge head built from the merged statistics on the plan's test
samples of the classes the replies hold; "predictions changed": test samples whose class differs from
the float64 triangle's). Replies now send the Gram of at most M/4 samples as its rank factor `L = S Vᵀ`
(`L^T L = G`, a function of G alone, so it tells the server nothing the Gram does not), else the triangle.

{chr(10).join(table)}
"""
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('ridge-wire', text)}")


if __name__ == "__main__":
    main()
