"""``fedrecon report``: compare run folders in a table (terminal and Markdown) and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.report import human_bytes, plot_accuracy, pyplot


@dataclass(frozen=True)
class Run:
    name: str
    folder: Path
    summary: dict
    rows: list[dict]


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{folder}: not a finished run folder (no summary.json)")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return Run(folder.name, folder, json.loads(summary_path.read_text()), rows)


COLUMNS = (
    ("run", lambda r: r.name),
    ("scenario", lambda r: r.summary.get("scenario", "-")),
    ("merge", lambda r: r.summary.get("merge", "-")),
    ("backbone", lambda r: r.summary.get("backbone", "-")),
    ("classes", lambda r: str(r.summary.get("classes_learned", "-"))),
    ("final acc", lambda r: _num(r.summary.get("final_accuracy"))),
    ("avg inc acc", lambda r: _num(r.summary.get("average_incremental_accuracy"))),
    # privacy.dp: the epsilon the run spent and the noise on each value a client released ("-": no DP)
    ("epsilon", lambda r: _num(r.summary.get("privacy_epsilon"), ".4g")),
    ("noise std", lambda r: _num(r.summary.get("noise_std"), ".3g")),
    ("up / class", lambda r: _bytes(r.summary.get("bytes_up_per_class"))),
    ("bytes up", lambda r: _bytes(r.summary.get("bytes_up"))),
    ("bytes down", lambda r: _bytes(r.summary.get("bytes_down"))),
    ("wall s", lambda r: f"{r.summary.get('wall_seconds', float('nan')):.1f}"),
)


def _num(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _bytes(v) -> str:
    return "-" if v is None else human_bytes(v)


def table(runs: list[Run], markdown: bool = False) -> str:
    header = [name for name, _ in COLUMNS]
    body = [[get(r) for _, get in COLUMNS] for r in runs]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in body])


def plot_bytes(runs: list[Run], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        rounds = [x["round"] for x in r.rows]
        ax.plot(rounds, [x["bytes_up"] for x in r.rows], marker="o", ms=3, label=f"{r.name} up")
        ax.plot(rounds, [x["bytes_down"] for x in r.rows], ls="--", label=f"{r.name} down")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("bytes per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def class_results(run: Run) -> tuple[dict, dict] | None:
    """``plan.json`` and, per evaluated round, ``{class: (correct, total)}``; None if absent."""
    plan_path, acc_path = run.folder / "plan.json", run.folder / "class_accuracy.jsonl"
    if not (plan_path.is_file() and acc_path.is_file()):
        return None
    by_round = {}
    for line in acc_path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_round[row["round"]] = dict(zip(row["ids"], zip(row["correct"], row["total"])))
    return json.loads(plan_path.read_text()), by_round


def _accuracy_on(results: dict, classes) -> float:
    hits = [results[c] for c in classes if c in results]
    total = sum(t for _, t in hits)
    return sum(c for c, _ in hits) / total if total else float("nan")


def forgetting_matrix(plan: dict, by_round: dict) -> tuple[np.ndarray, list[str], list[int]]:
    """Accuracy on each arrival's classes (rows, in arrival order) at each evaluated round."""
    rounds = sorted(by_round)
    arrivals = plan["arrivals"]
    m = np.full((len(arrivals), len(rounds)), np.nan)
    for i, a in enumerate(arrivals):
        for j, r in enumerate(rounds):
            if r >= a["round"]:
                m[i, j] = _accuracy_on(by_round[r], a["classes"])
    return m, [f"r{a['round']} c{a['client']}" for a in arrivals], rounds


def client_curves(plan: dict, by_round: dict) -> dict[int, list[tuple[int, float]]]:
    """Per client: accuracy at each evaluated round on the classes it has learned so far."""
    curves: dict[int, list[tuple[int, float]]] = {}
    for c in range(plan["clients"]):
        for r in sorted(by_round):
            learned = {k for a in plan["arrivals"] if a["client"] == c and a["round"] <= r for k in a["classes"]}
            if learned:
                curves.setdefault(c, []).append((r, _accuracy_on(by_round[r], learned)))
    return curves


def plot_forgetting(run: Run, plan: dict, by_round: dict, path: Path) -> None:
    plt = pyplot()
    m, labels, rounds = forgetting_matrix(plan, by_round)
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * len(rounds), 1.5 + 0.16 * len(labels)))
    im = ax.imshow(m, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    step = max(1, len(labels) // 40)
    ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=6)
    ax.set_xlabel("evaluation round")
    ax.set_ylabel("task learned (round, client)")
    ax.set_title(f"{run.name}: accuracy on each task's classes", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_clients(run: Run, plan: dict, by_round: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, points in client_curves(plan, by_round).items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=f"client {c}")
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("accuracy on the client's own classes")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(run.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(folders: list[str | Path], out: str | Path, echo=print) -> Path:
    """Print the comparison and write ``report.md`` with its plots into ``out``."""
    runs = [load_run(f) for f in folders]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    echo(table(runs))
    plot_accuracy({r.name: r.rows for r in runs}, out / "accuracy.png")
    plot_bytes(runs, out / "bytes.png")
    lines = ["# Run comparison", "", table(runs, markdown=True), "",
             "![accuracy against classes seen](accuracy.png)", "", "![bytes per round](bytes.png)", ""]
    for r in runs:
        results = class_results(r)
        if results is None:
            continue
        plot_clients(r, *results, out / f"clients-{r.name}.png")
        plot_forgetting(r, *results, out / f"forgetting-{r.name}.png")
        lines += [f"## {r.name}", "", f"![per-client accuracy](clients-{r.name}.png)", "",
                  f"![forgetting heat map](forgetting-{r.name}.png)", ""]
    lines += ["Runs:", ""] + [f"- `{r.name}`: `{r.folder}`" for r in runs]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    echo(f"\nwrote {report}")
    return report
