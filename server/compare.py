"""``fedrecon report``: compare run folders in a table (terminal and Markdown) and plots."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from server.differences import compared, label, show
from server.plots import plot_accuracy, plot_bytes, pyplot
from server.report import human_bytes


@dataclass(frozen=True)
class Run:
    name: str
    folder: Path
    summary: dict
    rows: list[dict]
    settings: dict = field(default_factory=dict)  # its scenario's keys (server.differences)
    label: str = ""  # its name and the settings that set it apart, for legends and titles


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{folder}: not a finished run folder (no summary.json)")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return Run(folder.name, folder, json.loads(summary_path.read_text()), rows)


def load_runs(folders: list[str | Path]) -> tuple[list[Run], list[str], dict[str, str]]:
    """The runs, each with its settings and label; the keys that differ between them, and
    the headline settings they share."""
    runs = [load_run(f) for f in folders]
    settings, keys, same = compared([r.folder for r in runs], [r.summary for r in runs])
    names = [r.name for r in runs]
    # two folders of one name (runs/a/demo, runs/b/demo) are told apart by their paths
    labelled = [replace(r, settings=s, label=label(r.name if names.count(r.name) == 1 else str(r.folder), s, keys))
                for r, s in zip(runs, settings)]
    return labelled, keys, same


# The results of a run; before them, a column for each scenario key the runs differ in.
COLUMNS = (
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
# The unknown-input score's AUROCs (server.open_set), shown where a run measured them
OPEN_SET_COLUMNS = (
    ("open auroc", "open_auroc_mean", lambda r: _num(r.summary.get("open_auroc_mean"))),
    ("oos auroc", "final_oos_auroc", lambda r: _num(r.summary.get("final_oos_auroc"))),
)


def columns(runs: list[Run]) -> list[tuple]:
    """The result columns of ``runs``: every one of :data:`COLUMNS`, the AUROCs after the
    accuracies where any run has them."""
    shown = [(name, get) for name, key, get in OPEN_SET_COLUMNS if any(key in r.summary for r in runs)]
    return [*COLUMNS[:3], *shown, *COLUMNS[3:]]


def _num(v, spec: str = ".4f") -> str:
    return "-" if v is None else format(v, spec)


def _bytes(v) -> str:
    return "-" if v is None else human_bytes(v)


def table(runs: list[Run], keys: list[str] = (), same: dict[str, str] | None = None, markdown: bool = False) -> str:
    """The runs' table: the run, a column per differing key, the results; above it, the
    headline settings every run shares."""
    shown = columns(runs)
    header = ["run", *keys, *(name for name, _ in shown)]
    body = [[r.name, *(show(r.settings[k]) if k in r.settings else "-" for k in keys), *(get(r) for _, get in shown)]
            for r in runs]
    shared = ", ".join(f"{k} {v}" for k, v in (same or {}).items())
    above = [f"{'same in every run' if len(runs) > 1 else 'settings'}: {shared}", ""] if shared else []
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(above + lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(above + [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in body])


def class_results(run: Run) -> tuple[dict, dict] | None:
    """``plan.json`` and, per evaluated round, ``{class: (correct, total)}``; None if absent
    (or empty: a site run's plan has no arrivals, and the sites' counts are not per class)."""
    plan_path, acc_path = run.folder / "plan.json", run.folder / "class_accuracy.jsonl"
    if not (plan_path.is_file() and acc_path.is_file()):
        return None
    by_round = {}
    for line in acc_path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_round[row["round"]] = dict(zip(row["ids"], zip(row["correct"], row["total"])))
    plan = json.loads(plan_path.read_text())
    if not by_round or not plan.get("arrivals"):  # no class scored (evaluation on the clients), or sites: no plan
        return None
    return plan, by_round


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
    ax.set_title(f"{run.label or run.name}: accuracy on each task's classes", fontsize=9)
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
    ax.set_title(run.label or run.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(folders: list[str | Path], out: str | Path, echo=print) -> Path:
    """Print the comparison and write ``report.md`` with its plots into ``out``."""
    runs, keys, same = load_runs(folders)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    echo(table(runs, keys, same))
    curves = {r.label: r.rows for r in runs}
    plot_accuracy(curves, out / "accuracy.png")
    plot_bytes(curves, out / "bytes.png")
    lines = ["# Run comparison", "", table(runs, keys, same, markdown=True), "",
             "![accuracy and classes seen a round](accuracy.png)", "", "![bytes per round](bytes.png)", ""]
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
