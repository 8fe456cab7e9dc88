"""An exported model predicts what its run scored: run, export, predict over the test split.

    .venv/bin/python bench/export_check.py [--reuse] [--no-doc]

For each row, one ``fedrecon run`` (run folders under runs/bench-export; ``--reuse`` reads
a finished one), ``fedrecon export`` (and ``--format onnx`` where onnxruntime is installed),
then every test sample of the classes seen is labelled by the exported model: CLINC150's
official test sentences through ``fedrecon predict --file --json`` (the command a user
types), Omniglot's test drawings through ``fedrecon.load_model(...).predict`` on the
arrays the dataset holds. The accuracy of the predicted classes (the best class of each
prediction; whether it is rejected as unknown is bench/unknown.py's matter) must equal
the run's final accuracy exactly. Writes the "export-check" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import fedrecon  # noqa: E402
from bench.docs import write_section  # noqa: E402
from bench.harness import fedrecon_run  # noqa: E402
from fedrecon.scenario import load_scenario  # noqa: E402
from server.prepare import prepare  # noqa: E402

ROWS = [
    ("clinc150-domains", "ncm", "scenarios/clinc150-domains.yaml", ["merge.head=ncm"]),
    ("clinc150-domains", "lda", "scenarios/clinc150-domains.yaml", ["merge.head=lda"]),
    ("clinc150-domains", "ridge", "scenarios/clinc150-domains.yaml", ["merge.head=ridge"]),
    ("omniglot-quickstart", "ncm", "scenarios/omniglot-quickstart.yaml", []),
    ("omniglot-efficientnet-adapters", "ridge", "scenarios/omniglot-efficientnet-adapters.yaml", []),
]


def formats() -> list[str]:
    """safetensors always; onnx where its extra is installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return ["safetensors"]
    return ["safetensors", "onnx"]


def predicted_classes(model_dir: Path, prep, index: np.ndarray) -> list[str]:
    """The best class of each test sample, as the exported model predicts it."""
    inputs = prep.dataset.inputs[index]
    if prep.entry.modality == "text":  # the command a user types, on a file of sentences
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
            f.write("\n".join(str(s).replace("\n", " ") for s in inputs) + "\n")
        cmd = [sys.executable, "-m", "server.cli", "predict", str(model_dir), "--file", f.name, "--json", "--top", "1"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
        return [json.loads(line)["top"][0]["label"] for line in proc.stdout.splitlines()]
    model = fedrecon.load_model(model_dir)
    return [p["top"][0]["label"] for p in model.predict(inputs, top=1)]


def check(name: str, head: str, scenario: str, overrides: list[str], out: Path, reuse: bool) -> list[dict]:
    summary, _ = fedrecon_run(scenario, overrides, out, reuse=reuse)
    prep = prepare(load_scenario(out / "scenario.json"))
    index, labels = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
    truth = [prep.dataset.class_names[int(c)] for c in labels]
    rows = []
    for fmt in formats():
        model_dir = out.parent / f"{out.name}-model-{fmt}"
        began = time.perf_counter()
        manifest = fedrecon.export(out, model_dir, format=fmt)
        seconds = time.perf_counter() - began
        began = time.perf_counter()
        got = predicted_classes(model_dir, prep, index)
        predict_seconds = time.perf_counter() - began
        accuracy = float(np.mean([g == t for g, t in zip(got, truth)]))
        rows.append({"scenario": name, "head": head, "format": fmt, "run_accuracy": summary["final_accuracy"],
                     "export_accuracy": accuracy, "equal": accuracy == summary["final_accuracy"],
                     "samples": len(index), "classes": len(manifest["classes"]),
                     "threshold": manifest["unknown"]["threshold"], "export_s": round(seconds, 1),
                     "predict_s": round(predict_seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def section(rows: list[dict]) -> str:
    lines = ["## Export check: the exported model predicts what its run scored", "",
             "Command: `.venv/bin/python bench/export_check.py` (run folders and models under `runs/bench-export`). "
             "Each run exported, then every test sample of the classes seen labelled by the exported model: CLINC150's "
             "official test sentences through `fedrecon predict --file --json`, Omniglot's test drawings through "
             "`fedrecon.load_model(...).predict`; the accuracy of the best class predicted against the run's final "
             "accuracy. Threshold: the unknown threshold the federation chose (shipped in the manifest).", "",
             "| scenario | head | format | run's accuracy | export's accuracy | equal | test samples | classes | "
             "threshold | export s | predict s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = "none" if r["threshold"] is None else f"{r['threshold']:.5g}"
        lines.append(f"| {r['scenario']} | {r['head']} | {r['format']} | {r['run_accuracy']:.4f} | "
                     f"{r['export_accuracy']:.4f} | {'yes' if r['equal'] else '**no**'} | {r['samples']:,} | "
                     f"{r['classes']} | {t} | {r['export_s']} | {r['predict_s']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="read finished runs in runs/bench-export")
    parser.add_argument("--no-doc", action="store_true", help="print only, do not write docs/benchmarks.md")
    parser.add_argument("--only", help="rows whose scenario contains this")
    args = parser.parse_args()
    rows = []
    for name, head, scenario, overrides in ROWS:
        if args.only and args.only not in name:
            continue
        rows += check(name, head, scenario, overrides, REPO / "runs" / "bench-export" / f"{name}-{head}", args.reuse)
    print(section(rows))
    if not args.no_doc:
        write_section("export-check", section(rows))


if __name__ == "__main__":
    main()
