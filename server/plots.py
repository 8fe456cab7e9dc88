"""The plots of a run folder and of ``fedrecon report``: accuracy and bytes a round, a line
per run, each run in a style of its own so that lines on top of each other stay visible."""

from __future__ import annotations

from pathlib import Path

# A run's line style and marker, by its place in the comparison. Equal curves are common
# (two runs differing only in a setting that changes no byte or no prediction): each run
# is also drawn thinner than the one before and on top of it, with hollow markers, so a
# line that lies exactly on another shows as a thin line inside a thick one.
STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ("-", "v"), ("--", "P"), (":", "X"), ("-.", "*"))


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only), imported when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def style(i: int, n: int) -> dict:
    """Keyword arguments of ``ax.plot`` for run ``i`` of ``n``: its colour, line style and
    marker, a width that shrinks run by run and a z-order that grows."""
    ls, marker = STYLES[i % len(STYLES)]
    width = 1.2 + 2.0 * (n - 1 - i) / max(n - 1, 1) if n > 1 else 1.5
    return {"color": f"C{i % 10}", "ls": ls, "marker": marker, "ms": 3 + width, "mfc": "none", "lw": width, "zorder": 2 + i}


def dodge(i: int, n: int) -> float:
    """Run ``i``'s shift along the round axis: a few hundredths of a round, so that equal
    values of several runs in one round stand side by side (rounds are whole numbers;
    the shift cannot be read as another round)."""
    step = min(0.06, 0.3 / max(n, 1))
    return step * (i - (n - 1) / 2)


def _legend(fig, ax, curves: dict) -> float:
    """The runs' legend below the plots (it covers no line there); the figure's share it takes."""
    if not any(curves):
        return 0.0
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", fontsize=7, frameon=False)
    return min(0.45, 0.03 * len(curves) + 0.01)


def plot_accuracy(curves: dict[str, list[dict]], path: Path) -> None:
    """Accuracy a round (top) and classes seen a round (bottom), a line per run from its
    metrics rows (rounds not evaluated have no accuracy point), named in a legend (a run
    folder's own plot has one nameless line).

    The x axis is the round, not the classes seen: a round may bring no new class (revisits,
    retries, clients away, a fixed ``rounds:`` past the last arrival) and still change the
    accuracy; against classes seen its point would stand on the same x as the round
    before, and such rounds stacked on one vertical line. The bottom panel keeps the
    classes seen of each round readable.
    """
    plt = pyplot()
    fig, (ax, seen) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    for i, (name, rows) in enumerate(curves.items()):
        kw, dx = style(i, len(curves)), dodge(i, len(curves))
        scored = [r for r in rows if r["accuracy"] is not None]
        ax.plot([r["round"] + dx for r in scored], [r["accuracy"] for r in scored], label=name, **kw)
        seen.plot([r["round"] for r in rows], [r["classes_seen"] for r in rows], drawstyle="steps-post",
                  **{**kw, "marker": None})
    ax.set_ylabel("accuracy on the classes seen")
    ax.set_ylim(0, 1.03)  # a run at 1.0 is drawn whole, not cut in half by the frame
    ax.grid(alpha=0.3)
    seen.set_xlabel("round")
    seen.set_ylabel("classes seen")
    seen.xaxis.get_major_locator().set_params(integer=True)
    seen.grid(alpha=0.3)
    fig.set_figheight(5.5 + 0.25 * len(curves) * any(curves))
    fig.tight_layout(rect=(0, _legend(fig, ax, curves), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bytes(curves: dict[str, list[dict]], path: Path) -> None:
    """Bytes up (left) and down (right) a round, a line per run in its own style: up and
    down apart, so that no run's down line hides under another's up line."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True)
    for i, (name, rows) in enumerate(curves.items()):
        kw, dx = style(i, len(curves)), dodge(i, len(curves))
        rounds = [r["round"] + dx for r in rows]
        for ax, key in zip(axes, ("bytes_up", "bytes_down")):
            ax.plot(rounds, [max(r[key], 1) for r in rows], label=name, **kw)  # a round of 0 bytes at the floor
    for ax, title in zip(axes, ("bytes up per round (clients to server)", "bytes down per round (server to clients)")):
        ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.set_figheight(4.2 + 0.25 * len(curves))
    fig.tight_layout(rect=(0, _legend(fig, axes[0], curves), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
