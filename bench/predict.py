"""Predicting with an exported model: export time and size, predictions a second.

    .venv/bin/python bench/predict.py [--no-doc]

For each backbone (conv4 on the Omniglot quickstart, all-MiniLM-L6-v2 on CLINC150,
EfficientNet-Lite0 on Omniglot, frozen), one small `fedrecon run`, then `fedrecon.export`
(timed; the folder's size on disk) and `fedrecon.load_model(...).predict` on the run's own
samples, prepared as the dataset holds them (a text model gets the sentences): predictions
a second with 1 and 2 torch threads, batch 1 and 64, torch on the CPU. Each figure is the
best of three timed passes after one untimed one. Writes the "predict" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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


def measure(name: str, path: str, overrides: list[str], work: Path) -> dict:
    run_dir, model_dir = work / f"run-{name}", work / f"model-{name}"
    summary, _ = fedrecon_run(path, overrides, run_dir)
    began = time.perf_counter()
    fedrecon.export(run_dir, model_dir)
    export_s = time.perf_counter() - began
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    dataset = load_dataset(load_scenario(REPO / path, overrides).data)
    inputs = dataset.inputs[:SAMPLES]
    inputs = [str(t) for t in inputs] if inputs.dtype == object else inputs
    model = fedrecon.load_model(model_dir)
    rates = {}
    for threads in THREADS:
        torch.set_num_threads(threads)
        for batch in BATCHES:
            rates[threads, batch] = per_second(model, inputs, batch)
    return {"name": name, "classes": len(model.names), "accuracy": summary["final_accuracy"], "export_s": export_s,
            "size": size, "rates": rates}


def table(rows: list[dict]) -> str:
    head = ("| backbone | classes | accuracy in the run | export s | folder size | "
            + " | ".join(f"{t} thread{'s' if t > 1 else ''}, batch {b}" for t in THREADS for b in BATCHES) + " |")
    lines = [head, "|" + "---|" * (5 + len(THREADS) * len(BATCHES))]
    for r in rows:
        rates = " | ".join(f"{r['rates'][t, b]:,.0f}" for t in THREADS for b in BATCHES)
        lines.append(f"| {r['name']} | {r['classes']} | {r['accuracy']:.4f} | {r['export_s']:.2f} | "
                     f"{r['size'] / 1e6:.2f} MB | {rates} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedrecon-predict-") as tmp:
        rows = [measure(name, path, overrides, Path(tmp)) for name, (path, overrides) in MODELS.items()]
    text = ("## Predicting with an exported model\n\nCommand: `.venv/bin/python bench/predict.py` (one small `fedrecon "
            "run` a backbone: the Omniglot quickstart with 20 characters on conv4, CLINC150's ten domains on MiniLM, 20 "
            "Omniglot characters on a frozen EfficientNet-Lite0; then `fedrecon.export` and "
            "`fedrecon.load_model(...).predict` on 256 of the dataset's own samples, sentences for MiniLM; torch on the "
            "CPU; predictions a second, the best of three passes after a warm-up; ONNX is not measured yet).\n\n"
            + table(rows))
    print(text)
    if not args.no_doc:
        write_section("predict", text)


if __name__ == "__main__":
    main()
