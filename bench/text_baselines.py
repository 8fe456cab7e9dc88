"""Baselines on CLINC150 and HWU64 with all-MiniLM-L6-v2, all in the same harness.

    .venv/bin/python bench/text_baselines.py [--heads ncm lda] [--no-finetune] [--no-doc]

For each scenario: every prototype merge policy (`exact`, `centralized`, `fedrecon`,
`fedproto`, `local`) under each head on the frozen encoder, and `fedavg_finetune`
(FedAvg of the whole encoder and a growing linear head, cross-entropy on each task, no
replay). One `fedrecon run` each; plots by `fedrecon report` next to benchmarks.md.
Writes the "text-baselines" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402
from bench.harness import fedrecon_run  # noqa: E402
from server.compare import write_report  # noqa: E402

SCENARIOS = ("scenarios/clinc150-domains.yaml", "scenarios/hwu64-dirichlet.yaml")
POLICIES = ("exact", "centralized", "fedrecon", "fedproto", "local")
# fedavg_finetune: a common fine-tuning recipe for a small sentence encoder (AdamW 5e-5)
# and a fast head. CLINC150's tasks hold 1,500 sentences (47 steps an epoch); HWU64's
# Dirichlet tasks about 200 (7 steps): with one epoch its head stays so small on the
# encoder's unit-length features that the biases decide every prediction, hence 5.
FINETUNE = ["merge.method=fedavg_finetune", "finetune.lr=5e-5", "finetune.head_lr=1e-2"]
EPOCHS = {"clinc150-domains": 1, "hwu64-dirichlet": 5}


def row(method: str, head: str, s: dict) -> str:
    per_round = (s["bytes_up"] + s["bytes_down"]) / s["rounds"]
    return (f"| {s['scenario']} | {method} | {head} | {s['final_accuracy']:.4f} | {s['average_incremental_accuracy']:.4f} | "
            f"{s['bytes_up_per_class']:,.0f} B | {s['bytes_down'] / s['classes_learned']:,.0f} B | {per_round:,.0f} B | "
            f"{s['wall_seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", nargs="+", default=["ncm", "lda"])
    parser.add_argument("--out", default="runs/bench-text-baselines")
    parser.add_argument("--no-finetune", action="store_true", help="leave out fedavg_finetune (the slow rows)")
    parser.add_argument("--reuse", action="store_true", help="read runs already finished in --out instead of running them")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    lines = ["| scenario | method | head | final acc | avg inc acc | bytes up / class | bytes down / class | "
             "bytes up+down / round | wall s |", "|---" * 9 + "|"]
    plots = []
    for path in SCENARIOS:
        stem, folders = Path(path).stem, []
        for head in args.heads:
            for policy in POLICIES:
                out = Path(args.out) / stem / f"{policy}-{head}"
                s, _ = fedrecon_run(path, [f"merge.prototypes={policy}", f"merge.head={head}"], out, args.reuse)
                lines.append(row(policy, head, s))
                print(lines[-1], flush=True)
                if head == args.heads[0]:
                    folders.append(out)
        if not args.no_finetune:
            out = Path(args.out) / stem / "fedavg_finetune"
            s, _ = fedrecon_run(path, [*FINETUNE, f"finetune.epochs={EPOCHS[stem]}"], out, args.reuse)
            lines.append(row("fedavg_finetune", "linear", s))
            print(lines[-1], flush=True)
            folders.append(out)
        plot_dir = REPO / "docs" / f"bench-{stem}"
        write_report(folders, plot_dir, echo=lambda *_: None)
        plots.append((stem, plot_dir.name))
    figures = []
    for stem, folder in plots:
        figures += [f"**{stem}**", f"![accuracy against classes seen]({folder}/accuracy.png) "
                    f"![bytes per round]({folder}/bytes.png)"]
        if not args.no_finetune:
            figures.append(f"![forgetting: exact]({folder}/forgetting-exact-{args.heads[0]}.png) "
                           f"![forgetting: fedavg_finetune]({folder}/forgetting-fedavg_finetune.png)")
    text = "\n\n".join([
        "## Text baselines: CLINC150 and HWU64 on all-MiniLM-L6-v2",
        "Command: `.venv/bin/python bench/text_baselines.py` (one `fedrecon run SCENARIO --set "
        "merge.prototypes=POLICY --set merge.head=HEAD` a row; fedavg_finetune: `--set "
        f"{' --set '.join(FINETUNE)} --set finetune.epochs=N`, N = "
        f"{', '.join(f'{k} {v}' for k, v in EPOCHS.items())}; run folders under `{args.out}`). `local`: mean over clients of each "
        "client's own head on all classes seen. `centralized`: every arrival at one site. Bytes per round: "
        "up plus down, averaged over the plan's rounds. Adapter policies on CLINC150: section Adapters.",
        "\n".join(lines),
        "`centralized` equals `exact` in every row: the exact merge loses nothing to federation. In "
        "CLINC150 each intent comes from one client in one piece, so `fedrecon` and `fedproto` equal `exact` "
        "too; HWU64's Dirichlet split gives an intent to several clients, and there the paper code's online "
        "averaging and FedProto's unweighted means fall below the pooled statistics. `local` knows only its "
        "own intents. `fedavg_finetune` learns each task (its first rounds) and forgets it under the next "
        "ones, while its whole encoder travels down and up with every task.",
        "Plots (`fedrecon report` on the first head's runs and fedavg_finetune, folders next to this file):",
        *figures,
    ])
    print("\n" + text)
    if not args.no_doc:
        print(f"\nwrote {write_section('text-baselines', text)}")


if __name__ == "__main__":
    main()
