"""Predicting with an exported model: export time and size, predictions a second, torch and onnxruntime.

    .venv/bin/python bench/predict.py [--no-doc] [--keep DIR]

For each backbone (conv4 on the Omniglot quickstart, all-MiniLM-L6-v2 on CLINC150,
EfficientNet-Lite0 on Omniglot, frozen), one small `fedrecon run`, then `fedrecon.export`
in both formats (timed from the run; the folder's size on disk) and
`fedrecon.load_model(...).predict` on the run's own samples, prepared as the dataset holds
them (a text model gets the sentences): predictions a second with 1 and 2 threads (torch's
`set_num_threads`, onnxruntime's intra-op threads), batch 1 and 64, on the CPU, torch and
onnxruntime measured one after the other on the same inputs. Each figure is the best of
three timed passes after one untimed one. For CLINC150, every official test sentence
(in scope and out of scope) is labelled by both formats: the labels compared, and the
largest score differences. Writes the "predict" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fedrecon  # noqa: E402
from bench.docs import write_section  # noqa: E402
from bench.harness import fedrecon_run  # noqa: E402
from fedrecon.data.registry import load_dataset  # noqa: E402
from fedrecon.scenario import load_scenario  # noqa: E402

FROZEN = ["adapters.schedule=frozen", "adapters.steps=0", "adapters.features=adapted", "merge.adapters=none",
          "adapters.until_round=null", "adapters.classifier=task"]
MODELS = {
    "conv4": ("scenarios/omniglot-quickstart.yaml", ["tasks.num_classes=20"]),
    "all-MiniLM-L6-v2": ("scenarios/clinc150-domains.yaml", []),
    "EfficientNet-Lite0": ("scenarios/omniglot-efficientnet-adapters.yaml", ["tasks.num_classes=20", *FROZEN]),
}
BATCHES = (1, 64)
THREADS = (1, 2)
SAMPLES = 256  # inputs predicted in each timed pass


def per_second(model, inputs, batch: int) -> float:
    """Predictions a second over ``inputs`` in batches of ``batch``: the best of three passes."""
    chunks = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    model.predict(chunks[0])  # warm-up (lazy loads, first allocations)
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        for chunk in chunks:
            model.predict(chunk)
        best = min(best, time.perf_counter() - began)
    return len(inputs) / best


def size_of(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def timed_export(run_dir: Path, out: Path, fmt: str) -> float:
    began = time.perf_counter()
    fedrecon.export(run_dir, out, format=fmt)
    return time.perf_counter() - began


def clinc150_check(torch_model, onnx_model, root: Path) -> dict:
    """Both formats on CLINC150's official test sentences: labels and largest differences."""
    data = json.loads(((root / "clinc150") if (root / "clinc150").is_dir() else root).joinpath("data_full.json").read_text())
    sentences = np.array([text for text, _ in data["test"] + data["oos_test"]], dtype=object)
    torch.set_num_threads(2)
    mine, theirs = onnx_model.runtime.outputs(sentences), torch_model.runtime.outputs(sentences)
    return {"sentences": len(sentences), "in_scope": len(data["test"]), "same": int((mine.best == theirs.best).sum()),
            "score": float(np.abs(mine.scores - theirs.scores).max()),
            "unknown": float(np.abs(mine.unknown - theirs.unknown).max())}


def measure(name: str, path: str, overrides: list[str], work: Path, reuse: bool) -> dict:
    run_dir, model_dir, onnx_dir = work / f"run-{name}", work / f"model-{name}", work / f"onnx-{name}"
    summary, _ = fedrecon_run(path, overrides, run_dir, reuse=reuse)
    export_s = {"safetensors": timed_export(run_dir, model_dir, "safetensors"), "onnx": timed_export(run_dir, onnx_dir, "onnx")}
    scenario = load_scenario(REPO / path, overrides)
    inputs = load_dataset(scenario.data).inputs[:SAMPLES]
    inputs = [str(t) for t in inputs] if inputs.dtype == object else inputs
    model = fedrecon.load_model(model_dir)
    rates = {}
    for threads in THREADS:
        torch.set_num_threads(threads)
        onnx_model = fedrecon.load_model(onnx_dir, threads=threads)
        for batch in BATCHES:  # torch, then onnxruntime, on the same inputs: the machine's load alike
            rates[threads, batch] = per_second(model, inputs, batch), per_second(onnx_model, inputs, batch)
    check = clinc150_check(model, onnx_model, Path(scenario.data.root)) if scenario.data.dataset == "clinc150" else None
    return {"name": name, "classes": len(model.names), "accuracy": summary["final_accuracy"], "export_s": export_s,
            "size": {"safetensors": size_of(model_dir), "onnx": size_of(onnx_dir)}, "rates": rates, "check": check}


def table(rows: list[dict]) -> str:
    lines = ["| backbone | classes | accuracy in the run | export s (safetensors) | folder size | export s (ONNX) | "
             "ONNX folder size |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['classes']} | {r['accuracy']:.4f} | {r['export_s']['safetensors']:.2f} | "
                     f"{r['size']['safetensors'] / 1e6:.2f} MB | {r['export_s']['onnx']:.2f} | "
                     f"{r['size']['onnx'] / 1e6:.2f} MB |")
    lines += ["", "| backbone | threads | batch | torch, predictions a second | onnxruntime | onnxruntime / torch |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        for (threads, batch), (in_torch, in_onnx) in r["rates"].items():
            lines.append(f"| {r['name']} | {threads} | {batch} | {in_torch:,.0f} | {in_onnx:,.0f} | "
                         f"{in_onnx / in_torch:.2f}x |")
    for r in rows:
        if r["check"]:
            c = r["check"]
            lines.append(f"\n{r['name']} on CLINC150's {c['sentences']:,} official test sentences ({c['in_scope']:,} in "
                         f"scope, {c['sentences'] - c['in_scope']:,} out of scope): onnxruntime's label is torch's on {c['same']:,} of them; largest "
                         f"score difference {c['score']:.2g}, largest unknown-score difference {c['unknown']:.2g}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--keep", metavar="DIR", help="keep the runs and models in DIR, and reuse the runs a "
                        "previous --keep DIR finished (a rerun measures again without running again)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedrecon-predict-") as tmp:
        work = Path(args.keep or tmp)
        rows = []
        for name, (path, overrides) in MODELS.items():
            rows.append(measure(name, path, overrides, work, reuse=bool(args.keep)))
            print(json.dumps({**rows[-1], "rates": {f"{t}x{b}": v for (t, b), v in rows[-1]["rates"].items()}}), flush=True)
    text = ("## Predicting with an exported model\n\nCommand: `.venv/bin/python bench/predict.py` (one small `fedrecon "
            "run` a backbone: the Omniglot quickstart with 20 characters on conv4, CLINC150's ten domains on MiniLM, 20 "
            "Omniglot characters on a frozen EfficientNet-Lite0; then `fedrecon.export` and "
            "`fedrecon.load_model(...).predict` on 256 of the dataset's own samples, sentences for MiniLM, for the "
            "safetensors folder (torch) and the ONNX one (onnxruntime, every graph optimisation), one after the other; "
            "on the CPU; predictions a second, the best of three passes after a warm-up; the ONNX export is timed from "
            "the run, the safetensors export it converts included).\n\n"
            + table(rows))
    print(text)
    if not args.no_doc:
        write_section("predict", text)


if __name__ == "__main__":
    main()
