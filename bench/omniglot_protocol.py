"""The Federated Reconnaissance protocol on Omniglot, every method in the same harness.

    .venv/bin/python bench/omniglot_protocol.py [--out runs/bench-omniglot] [--no-doc]

Runs scenarios/omniglot-fedrecon.yaml (5 clients, 600 evaluation characters, 15
training and 5 test drawings, 10 new characters per client per round) with `fedrecon
run` once per method, and a variant where half the characters come back one round
later with 5 new drawings (10 + 5 training drawings: the revisits the paper's merge
mis-weights). Prints accuracy after 50/100/200/400/600 classes and writes the
"omniglot" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from bench.harness import accuracy_at, fedrecon_run  # noqa: E402
from server.compare import write_report  # noqa: E402

SCENARIO = "scenarios/omniglot-fedrecon.yaml"
CHECKPOINTS = (50, 100, 200, 400, 600)
# fedavg_finetune's settings: the best final accuracy of lr 1e-4 / 1e-3 (x head_lr 1e-2,
# 5 epochs) on omniglot-quickstart (0.188 / 0.108).
FINETUNE = ["merge.method=fedavg_finetune", "finetune.lr=1e-4", "finetune.head_lr=1e-2", "finetune.epochs=5"]
METHODS = {
    "exact (conv4)": [],
    "centralized (one site)": ["merge.prototypes=centralized"],
    "fedrecon": ["merge.prototypes=fedrecon"],
    "fedproto": ["merge.prototypes=fedproto"],
    "local (no merge)": ["merge.prototypes=local"],
    "fedavg_finetune (conv4)": FINETUNE,
    "exact (raw pixels)": ["model.backbone=pixels", "model.checkpoint=null"],
}
PLOTS = REPO / "docs" / "bench-omniglot"  # next to benchmarks.md, which links them
REVISITS = ["tasks.train_shots=10", "tasks.revisits={fraction: 0.5, shots: 5, after: 1}"]
REVISIT_METHODS = ("exact (conv4)", "fedrecon", "fedproto")


def slug(name: str) -> str:
    """A run folder's name (and its label in the plots) from a method's name."""
    return name.split(" ")[0] + ("-pixels" if "pixels" in name else "")


def run(name: str, overrides: list[str], out: Path) -> dict:
    summary, rows = fedrecon_run(SCENARIO, overrides, out)
    print(f"{name}: final {summary['final_accuracy']:.4f} in {summary['wall_seconds']:.0f} s", flush=True)
    return {"at": accuracy_at(rows, CHECKPOINTS), "summary": summary}


def table(results: dict[str, dict], title: str) -> str:
    head = ("| method | " + " | ".join(f"{c} classes" for c in CHECKPOINTS)
            + " | avg inc acc | bytes up / class | bytes down / class | wall s |")
    lines = [f"**{title}**", "", head, "|---" * (len(CHECKPOINTS) + 5) + "|"]
    for name, r in results.items():
        cells = [f"{r['at'][c]:.3f}" if c in r["at"] else "-" for c in CHECKPOINTS]
        s = r["summary"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['average_incremental_accuracy']:.3f} | "
                     f"{s['bytes_up_per_class']:,.0f} B | {s['bytes_down'] / s['classes_learned']:,.0f} B | "
                     f"{s['wall_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench-omniglot")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    out = Path(args.out)
    plain = {name: run(name, o, out / "plain" / slug(name)) for name, o in METHODS.items()}
    revisit = {name: run(name + " +revisits", METHODS[name] + REVISITS, out / "revisits" / slug(name))
               for name in REVISIT_METHODS}
    # plots of the paper's protocol: accuracy and bytes per run, per-client and forgetting maps
    write_report([out / "plain" / slug(name) for name in METHODS], PLOTS, echo=lambda *_: None)
    text = "\n\n".join([
        "## Omniglot: the Federated Reconnaissance protocol",
        "Command: `.venv/bin/python bench/omniglot_protocol.py` (each method is one `fedrecon run "
        f"{SCENARIO} --set ...`; run folders under `{args.out}`; in simulation the backbone's weights do not "
        "travel: `fedrecon run` puts them where this machine's virtual clients read them). Accuracy on the test drawings of all "
        "classes seen, after each number of classes; `local`: mean over clients of each client's own head.",
        table(plain, "Disjoint classes (the paper's protocol)"),
        table(revisit, "With revisits: 10 training drawings, then half the classes come back one round later with 5 new drawings"),
        "With disjoint classes every class comes from one client in one piece, so `fedrecon` and `fedproto` "
        "equal `exact`; revisits are where their weighting departs from the pooled mean. `centralized` "
        "(every arrival at one site) equals `exact`: the exact merge loses nothing to federation. "
        "`fedavg_finetune` (FedAvg of conv4 and a growing linear head, cross-entropy on each task, no "
        f"replay; `{' '.join(FINETUNE[1:])}`) forgets: each round's training pushes the old classes' "
        "logits down, and the whole model (448 kB) travels each way with every task.",
        f"Plots (`fedrecon report` on the disjoint runs, written to `{PLOTS.relative_to(REPO)}`): accuracy "
        "on the classes seen by round (classes seen beneath) and bytes per round for every method; per-client accuracy and the forgetting "
        "heat map (accuracy on each task's classes, by evaluation round) of `exact` and `fedavg_finetune`.",
        f"![accuracy on the classes seen, by round]({PLOTS.name}/accuracy.png)",
        f"![bytes per round]({PLOTS.name}/bytes.png)",
        f"![forgetting: exact]({PLOTS.name}/forgetting-exact.png) "
        f"![forgetting: fedavg_finetune]({PLOTS.name}/forgetting-fedavg_finetune.png)",
        f"![per-client accuracy: exact]({PLOTS.name}/clients-exact.png) "
        f"![per-client accuracy: fedavg_finetune]({PLOTS.name}/clients-fedavg_finetune.png)",
    ])
    print("\n" + text)
    if not args.no_doc:
        print(f"\nwrote {write_section('omniglot', text)}")


if __name__ == "__main__":
    main()
