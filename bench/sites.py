"""Sites: the model sent to the nodes, round by round, beside the statistics sent up.

    .venv/bin/python bench/sites.py [--only omniglot|clinc150] [--reuse] [--no-doc]

Each row is one ``fedrecon run`` (Flower's simulation) of a scenario with a ``sites``
section, 3 sites and 4 rounds, in runs/bench-sites/<row>/ (fresh site folders each time):

- Omniglot: ``python -m fedrecon.data.omniglot_sites`` folders (an evaluation alphabet a
  site, 15 drawings to learn and 5 to test a character), conv4 (64 features), heads ncm, lda
  and ridge (its defaults: 4,000 random features, lambda 100).
- CLINC150: the official train and test sentences of one domain a site (``train.csv``,
  ``test.csv``: text,label; 15 intents, 1,500 and 450 sentences), frozen all-MiniLM-L6-v2
  (384 features), heads ncm and lda. One domain, not two: with two a site, round 1 alone
  took 230 s on 2 shared cores (each site embeds its sentences on CPU, twice in round 1:
  for its statistics and for the unknown threshold's scores).
- Omniglot ncm again under ``merge.prototypes=centralized`` (one site reading every folder):
  its final accuracy must equal the three sites'.

``sites.every_s`` leaves time between rounds: when round 2's row is in the run's
metrics.jsonl, the script copies the held-back part into site 2 (Omniglot: ``later/*``, one
more alphabet; CLINC150: a fourth domain's rows appended to site 2's CSVs), so round 3
learns new classes and round 4 nothing. At each row the script also reads site 0's node
folder: the merged statistics it holds (``.fedrecon/merged/stats.npz``, the server's bit
for bit: what a new site would be sent whole, split into class rows and shared arrays) and
its model folder's ``head.safetensors``. Writes the "sites" section of docs/benchmarks.md,
and the results to runs/bench-sites/results.json (``--reuse`` writes the section from them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.docs import write_section  # noqa: E402
from bench.site_folders import DATASETS  # noqa: E402
from fedrecon.learning.stats import SHARED  # noqa: E402

DATA = REPO.parent / "shared" / "data"  # --data: another place
OUT = REPO / "runs" / "bench-sites"
ROUNDS, LATER_AFTER = 4, 2  # the held-back data is copied in once round LATER_AFTER's row is written
EVERY_S = {"omniglot": 20.0, "clinc150": 45.0}  # a round's start to the next's: room to copy after round 2

ROWS = [  # (dataset, head, overrides)
    ("omniglot", "ncm", []),
    ("omniglot", "lda", []),
    ("omniglot", "ridge", []),
    ("omniglot", "ncm", ["merge.prototypes=centralized"]),
    ("clinc150", "ncm", []),
    ("clinc150", "lda", []),
]


def scenario(dataset: str, head: str, folder: Path) -> dict:
    sites = {"folders": [str(folder / f"site-{k}") for k in range(3)], "every_s": EVERY_S[dataset]}
    if dataset == "omniglot":
        model = {"backbone": "conv4", "checkpoint": str(REPO / "checkpoints" / "conv4-omniglot.pt"), "device": "cpu"}
        sites.update(read="ink", image_size=28)
    else:
        model = {"backbone": "all-minilm-l6-v2", "device": "cpu"}
        sites.update(read="text")
    return {"name": f"bench-sites-{dataset}-{head}", "seed": 0, "model": model, "clients": {"count": 3},
            "sites": sites, "rounds": ROUNDS, "merge": {"prototypes": "exact", "head": head},
            "evaluation": {"where": "clients"}}


# --- one run, watched -------------------------------------------------------------------

def held_model(site: Path) -> dict | None:
    """What site 0 holds now: its merged statistics' bytes (rows, shared arrays) and head.safetensors'."""
    node = next((site / n for n in (".fedrecon", ".fedrecon-one-site") if (site / n / "merged").is_dir()), None)
    if node is None:
        return None
    with np.load(node / "merged" / "stats.npz", allow_pickle=False) as npz:
        sizes = {k: npz[k].nbytes for k in npz.files}
    shared = sum(v for k, v in sizes.items() if k in SHARED)
    return {"stats_rows": sum(sizes.values()) - shared, "stats_shared": shared,
            "head_file": (node / "model" / "head.safetensors").stat().st_size}


def watched_run(name: str, dataset: str, head: str, overrides: list[str], data: Path) -> dict:
    """Run with fresh site folders; note site 0's model at every row; copy the later data in after round 2."""
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    folder = out / "sites"
    make, later = DATASETS[dataset]
    make(folder, data)
    path = out / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario(dataset, head, folder), sort_keys=False))
    cmd = [sys.executable, "-m", "server.cli", "run", str(path), "--out", str(out / "run")]
    for o in overrides:
        cmd += ["--set", o]
    metrics, held, copied = out / "run" / "metrics.jsonl", {}, None
    began = time.time()
    with (out / "run.log").open("w") as log:
        # this checkout's packages first, in Ray's workers too (the editable install may name another)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            done = proc.poll() is not None
            lines = metrics.read_text().splitlines(keepends=True) if metrics.is_file() else []
            rows = [json.loads(x) for x in lines if x.endswith("\n")]
            fresh = [r["round"] for r in rows if r["round"] not in held]
            for n in fresh:  # rows that arrived together: only the last one's model is still there
                held[n] = held_model(folder / "site-0") if n == fresh[-1] else None
            if copied is None and LATER_AFTER in held:
                later(folder, data)
                copied = round(time.time() - began, 1)
                print(f"{name}: later data copied into site 2 at {copied} s", flush=True)
            if done:
                break
            time.sleep(0.2)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {proc.returncode}): see {out / 'run.log'}\n"
                         + (out / "run.log").read_text()[-3000:])
    summary = json.loads((out / "run" / "summary.json").read_text())
    learned = 0
    for r in rows:
        r["new_classes"], learned = r["classes_learned"] - learned, r["classes_learned"]
        r.update(held.get(r["round"]) or {})
    sites = 1 if "merge.prototypes=centralized" in overrides else 3  # one site reads every folder
    result = {"name": name, "dataset": dataset, "head": head, "overrides": overrides, "sites": sites, "rows": rows,
              "final_accuracy": summary["final_accuracy"], "seconds": round(time.time() - began, 1),
              "command": " ".join(["fedrecon", "run", str(path.relative_to(REPO)), *[f"--set {o}" for o in overrides]])}
    print(json.dumps(result), flush=True)
    return result


# --- the section ------------------------------------------------------------------------

def kb(n) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} KB" if n >= 1e3 else f"{round(n)} B"


def whole(r: dict) -> int | None:
    """The whole merged statistics after round ``r`` (as a new site is sent them), or None if not read."""
    return r["stats_rows"] + r["stats_shared"] if "stats_rows" in r else None


def findings(result: dict) -> list[str]:
    """What the rows say, in sentences: the quiet rounds, and the round that learned the copied data."""
    rows, sites = result["rows"], result["sites"]
    out = []
    quiet = [r for r in rows if r["round"] > 1 and r["new_classes"] == 0]
    if quiet:
        out.append(f"rounds with nothing new ({', '.join(str(r['round']) for r in quiet)}): model updates "
                   f"{kb(max(r['bytes_model'] for r in quiet))} for the {sites} site{'s' * (sites > 1)} at most, all down "
                   f"{kb(max(r['bytes_down'] for r in quiet))}")
    late = [r for r in rows if r["round"] > 1 and r["new_classes"] > 0]
    if not late:
        out.append("**the copied data was learned in no round** (copied too late?)")
    for r in late:
        per_site = r["bytes_model"] / sites
        full = whole(r)
        shared = r.get("stats_shared", 0)
        text = (f"round {r['round']} ({r['new_classes']} new classes): {kb(per_site)} a site, against "
                f"{kb(full)} for the whole statistics")
        if shared:
            text += f", of which the shared arrays are {kb(shared)} ({shared / per_site:.0%} of the update)"
        out.append(text)
    return out


def table(result: dict) -> list[str]:
    lines = [f"**{result['dataset']}, {result['head']}**"
             + (f" ({', '.join(result['overrides'])})" if result["overrides"] else "")
             + f": {result['sites']} site{'s' * (result['sites'] > 1)}, final accuracy {result['final_accuracy']:.4f}, "
             + f"{result['seconds']:.0f} s. "
             + "; ".join(findings(result)) + ".", "",
             "| round | new classes | classes | bytes up (statistics) | model updates to the sites (bytes_model) | "
             "other messages down | whole statistics: class rows | whole statistics: shared arrays | "
             "head.safetensors | accuracy |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        shared = kb(r.get("stats_shared")) if r.get("stats_shared") else "none" if "stats_shared" in r else "-"
        lines.append(f"| {r['round']} | {r['new_classes']} | {r['classes_learned']} | {kb(r['bytes_up'])} | "
                     f"{kb(r['bytes_model'])} | {kb(r['bytes_down'] - r['bytes_model'])} | {kb(r.get('stats_rows'))} | "
                     f"{shared} | {kb(r.get('head_file'))} | {acc} |")
    return lines


def section(results: list[dict], commit: str) -> str:
    lines = ["## Sites: the model sent to the nodes", "",
             f"Command: `.venv/bin/python bench/sites.py` (at commit {commit}; scenarios, site folders and run folders "
             "under `runs/bench-sites`; each run is the `fedrecon run` named under its table, Flower's simulation). "
             "Three sites, 4 rounds; when round 2's row is written the script copies new data into site 2 (Omniglot: "
             "another alphabet, train and test; CLINC150: a fourth domain's train and test rows appended to its "
             "CSVs), so round 3 learns new classes. Bytes up: the round's replies (mostly the sites' statistics of "
             "what they had not learned). Model updates: what `bytes_model` counts, the messages that send each of "
             "the 3 sites the merged statistics' rows and shared arrays changed since the version it holds (in "
             "round 1, everything). Other messages down: the rest of `bytes_down` (the site tasks, and the "
             "unknown-input threshold's query where the run makes one). For comparison, what the whole model weighs "
             "after the round, read in site 0's node folder: the merged statistics it holds (what a new site is sent "
             "whole; class rows: ids, counts, sums and for ridge the random-feature sums; shared arrays as packed "
             "upper triangles: lda's second moment, ridge's Gram) and its model folder's `head.safetensors` (the "
             "backbone's file, unchanged, is not counted). 2-core CPU machine shared with other work: the seconds "
             "vary with load.", ""]
    for result in results:
        lines += table(result) + ["", f"Run: `{result['command']}`", ""]
    by = {(r["dataset"], r["head"], bool(r["overrides"])): r for r in results}
    fed, one = by.get(("omniglot", "ncm", False)), by.get(("omniglot", "ncm", True))
    if fed and one:
        same = fed["final_accuracy"] == one["final_accuracy"]
        lines += [f"Omniglot ncm, three sites against one site reading every folder (`merge.prototypes=centralized`, "
                  f"the same copy after round 2): final accuracy {fed['final_accuracy']:.4f} against "
                  f"{one['final_accuracy']:.4f}, {'equal' if same else '**not equal**'}.", ""]
    lines += notes(results)
    return "\n".join(lines).rstrip()


def notes(results: list[dict]) -> list[str]:
    """Where the bytes go, from the rows: class rows, the shared arrays, the threshold's query."""
    out = []
    for result in results:
        if result["sites"] == 1:
            continue
        late = next((r for r in result["rows"] if r["round"] > 1 and r["new_classes"] > 0), None)
        quiet = [r for r in result["rows"] if r["round"] > 1 and r["new_classes"] == 0]
        if late is None or "stats_shared" not in late:
            continue
        per_site = late["bytes_model"] / result["sites"]
        text = (f"{result['dataset']} {result['head']}: round {late['round']} sends each site {kb(per_site)} for "
                f"{late['new_classes']} new classes")
        if late["stats_shared"]:
            text += (f", {late['stats_shared'] / per_site:.0%} of it the shared arrays ({kb(late['stats_shared'])}), "
                     "sent whole because any new sample changes them")
        else:
            text += " (their rows only)"
        if quiet:
            text += (f"; a round with nothing new sends {kb(max(r['bytes_model'] for r in quiet) / result['sites'])} "
                     f"a site of model update and {kb(max(r['bytes_down'] - r['bytes_model'] for r in quiet))} "
                     "of other messages in all")
        out.append(f"- {text}.")
    if not out:
        return []
    return ["Where the bytes go (model update a site; the other messages are the tasks and the unknown-input "
            "threshold's query, which brings the round's model update):", "", *out, "",
            "Under ncm a site is sent only the new classes' rows, and an empty update (its settings: 1.5 KB) when nothing is "
            "new. Under lda and ridge the shared arrays change whenever any site learns anything, so they travel "
            "whole to every site in each such round: lda's d x d second moment (16.6 KB at Omniglot's 64 "
            "features, 591 KB at MiniLM's 384) and ridge's Gram of its 4,000 random features (64 MB packed), which "
            "makes a ridge round that learns one alphabet send every site about as much as the first round did. "
            "Up, a site of few samples sends the Gram as the rank factor of its samples (`ClassStats.gram_factor`)."]


def code_commit() -> str:
    """The commit the runs run, read before they start, and whether the product code differs from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fedrecon", "clients", "strategies", "server"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return commit + (" with uncommitted changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(DATASETS), help="only this dataset's rows")
    parser.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    parser.add_argument("--reuse", action="store_true",
                        help="write the section from the last runs' results (runs/bench-sites/results.json)")
    parser.add_argument("--no-doc", action="store_true", help="print only, do not write docs/benchmarks.md")
    args = parser.parse_args()
    saved = OUT / "results.json"
    if args.reuse:
        kept = json.loads(saved.read_text())
        commit, results = kept["commit"], kept["results"]
    else:
        commit = code_commit()
        results = []
        for dataset, head, overrides in ROWS:
            if args.only and dataset != args.only:
                continue
            name = f"{dataset}-{head}" + ("-centralized" if overrides else "")
            results.append(watched_run(name, dataset, head, overrides, args.data))
        saved.write_text(json.dumps({"commit": commit, "results": results}, indent=1) + "\n")
    text = section(results, commit)
    print(text)
    if not args.no_doc:
        write_section("sites", text)


if __name__ == "__main__":
    main()
