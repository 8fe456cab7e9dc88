"""``fedrecon merge``: the top tier over edge runs, added exactly and scored.

Each edge of a scenario with ``clients.edges`` may run as a federation of its own
(``--set clients.edge=K``), on its own server. Under the ``exact`` merge a run's
``stats.npz`` is the sum of its clients' statistics, so the sum of the edge runs'
statistics is the flat federation's; this scores that sum on the whole plan's test
samples, as the flat run scores its own after its last round.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedrecon.scenario import ScenarioError, scenario_json

# What edge runs of one scenario may differ in: where and how each ran, not what it learned.
MAY_DIFFER = {("clients", "edge"), ("simulation",), ("tracking",), ("faults",)}


class MergeError(ValueError):
    """Run folders that cannot be added: the one line says which and why."""


def _flat(d: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for k, v in d.items():
        key = (*prefix, k)
        if any(key[:len(m)] == m for m in MAY_DIFFER):
            continue
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


def _difference(a, b) -> str | None:
    fa, fb = _flat(a.model_dump(mode="json")), _flat(b.model_dump(mode="json"))
    for key in sorted(set(fa) | set(fb), key=str):
        if fa.get(key) != fb.get(key):
            return f"{'.'.join(map(str, key))} ({fb.get(key)!r}, not {fa.get(key)!r})"
    return None


def load_edges(runs: list[Path]) -> tuple[object, list[dict], list]:
    """The runs' common whole scenario (``clients.edge`` unset), their summaries and
    statistics; raises :class:`MergeError` or ``ScenarioError`` with one line."""
    from fedrecon.learning.stats import ClassStats
    from server.server_app import resume_scenario

    if not runs:
        raise MergeError("fedrecon merge: give the run folders of two or more edges")
    scenarios, summaries, stats = [], [], []
    for run in runs:
        for name in ("scenario.json", "summary.json", "stats.npz"):
            if not (run / name).is_file():
                raise MergeError(f"{run}: no {name} (a finished run folder of fedrecon run or deploy-local is needed)")
        scenarios.append(resume_scenario(run))
        summaries.append(json.loads((run / "summary.json").read_text()))
        with np.load(run / "stats.npz", allow_pickle=False) as npz:
            stats.append(ClassStats.from_arrays({k: npz[k] for k in npz.files}))
    first, seen = scenarios[0], {}
    for run, s in zip(runs, scenarios):
        if s.clients.edge is None:
            raise MergeError(f"{run}: not an edge run (clients.edge is null); run each edge with --set clients.edge=K")
        if s.clients.edge in seen:
            raise MergeError(f"{run}: edge {s.clients.edge} again (also {seen[s.clients.edge]})")
        seen[s.clients.edge] = run
        why = _difference(first, s)
        if why is not None:
            raise MergeError(f"{run}: not an edge of the same scenario as {runs[0]}: {why}")
    digests = {sm.get("backbone_digest") for sm in summaries}
    if len(digests) > 1:
        raise MergeError(f"the runs' backbones differ (weight digests {sorted(map(str, digests))}): "
                         "their features are not comparable")
    whole = first.model_copy(update={"clients": first.clients.model_copy(update={"edge": None})})
    return whole, summaries, stats


def merge_runs(runs: list[str | Path], out: str | Path, echo=print) -> dict:
    """Add the edge runs' statistics, score the sum, write ``out`` (stats.npz,
    scenario.json of the whole federation, summary.json); return the summary."""
    from fedrecon.backbones.cache import EmbeddingCache
    from fedrecon.backbones.embed import pick_device
    from fedrecon.dp import released
    from fedrecon.learning.evaluate import Evaluator
    from fedrecon.learning.stats import add_stats
    from server.prepare import prepare
    from strategies.edges import sums_bytes

    runs = [Path(r) for r in runs]
    whole, summaries, parts = load_edges(runs)
    prep = prepare(whole)
    if summaries[0].get("backbone_digest") not in (None, prep.digest):
        raise MergeError(f"the runs' backbone ({summaries[0]['backbone_digest']}) is not the scenario's now "
                         f"({prep.digest}): was model.checkpoint changed since?")
    s, edges = whole, whole.clients.edges
    missing = sorted(set(range(edges)) - {sc["edge"] for sc in summaries if "edge" in sc})
    stats = add_stats(parts, dim=prep.dim)
    seen = prep.plan.classes_seen(prep.plan.rounds)
    cache = EmbeddingCache(prep.digest, prep.dataset.fingerprint, s.model.embedding_cache)
    evaluator = Evaluator(prep.dataset, prep.model, prep.plan, s, pick_device(s.model.device), cache)
    correct, total = evaluator.class_counts(released(stats) if s.privacy.dp is not None else stats, seen)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "stats.npz", **stats.to_arrays())
    (out / "scenario.json").write_text(scenario_json(whole) + "\n")
    summary = {
        "scenario": s.name,
        "edges": edges,
        "runs": [{"run": str(r), "edge": sm.get("edge"), "classes_learned": sm["classes_learned"],
                  "final_accuracy": sm["final_accuracy"], "bytes_up": sm["bytes_up"]} for r, sm in zip(runs, summaries)],
        "missing_edges": missing,
        "classes_seen": int(len(seen)),
        "classes_learned": len(stats),
        "final_accuracy": float(correct.sum() / total.sum()) if total.sum() else None,
        "bytes_up": sum(sm["bytes_up"] for sm in summaries),
        "bytes_up_top": sums_bytes(parts),
        "backbone_digest": prep.digest,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for row in summary["runs"]:
        echo(f"edge {row['edge']}: {row['classes_learned']} classes learned, accuracy on its own classes "
             f"{row['final_accuracy']:.4f}  ({row['run']})")
    if missing:
        echo(f"warning: edges {missing} not given: the merged statistics hold only the edges above")
    echo(f"merged: {summary['classes_learned']} / {summary['classes_seen']} classes, "
         f"final accuracy {summary['final_accuracy']:.4f} -> {out}")
    return summary
