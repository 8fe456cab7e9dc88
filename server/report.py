"""Run folder: metrics.jsonl (a line a round), summary.json and an accuracy plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from server.plots import plot_accuracy


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def privacy_lines(s: dict) -> list[tuple[str, str]]:
    """The final table's lines on ``privacy.dp``: what was spent, and the noise it bought."""
    if "privacy_epsilon" not in s:
        return []
    target = f" of {s['privacy_epsilon_target']:g}" if "privacy_epsilon_target" in s else ""
    spent = f"{s['privacy_epsilon']:.3f}{target} (delta {s['privacy_delta']:g}, {s['releases']} releases)"
    noise = f"{s.get('noise_std', float('nan')):.3g} (noise multiplier {s['noise_multiplier']:.3g} x sensitivity)"
    if s.get("head") == "ridge":  # each block noised in proportion to its bound (fedrecon.dp.block_scales)
        noise += "; times clip on sums, b on random-feature sums, b^2 on the Gram"
    return [("privacy epsilon spent", spent), ("noise std, each released value", noise)]


def open_set_summary(rows: list[dict]) -> dict:
    """The unknown-input score's AUROCs over the run (server.open_set): ``open_auroc_mean``
    over the rounds that measured one, ``final_oos_auroc`` of the last round that did."""
    out = {}
    opened = [r["open_auroc"] for r in rows if r.get("open_auroc") is not None]
    if any("open_auroc" in r for r in rows):
        out["open_auroc_mean"] = float(np.mean(opened)) if opened else None
        out["open_auroc_rounds"] = len(opened)
    oos = [r["oos_auroc"] for r in rows if r.get("oos_auroc") is not None]
    if any("oos_auroc" in r for r in rows):
        out["final_oos_auroc"] = oos[-1] if oos else None
    return out


def open_set_lines(s: dict) -> list[tuple[str, str]]:
    """The final table's lines on the unknown-input score's AUROCs."""
    lines = []
    if "open_auroc_mean" in s:
        value = "-" if s["open_auroc_mean"] is None else f"{s['open_auroc_mean']:.4f}"
        lines.append(("open-set AUROC, seen vs unlearned", f"{value} (mean of {s['open_auroc_rounds']} rounds; "
                                                          "none once every class is learned)"))
    if "final_oos_auroc" in s:
        lines.append(("out-of-scope AUROC, last round", "-" if s["final_oos_auroc"] is None else f"{s['final_oos_auroc']:.4f}"))
    return lines


class RunRecorder:
    """Writes a run's metrics as they come and its summary at the end."""

    def __init__(self, out_dir: str | Path, rounds: int, echo=print):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.rounds = rounds
        self.echo = echo
        self.rows: list[dict] = []
        self.started = time.time()
        (self.out / "metrics.jsonl").write_text("")

    def restore(self, rows: list[dict]) -> None:
        """Rows of the rounds done before a resume (metrics.jsonl written anew from them:
        a line of a round after the checkpoint is dropped, that round runs again)."""
        self.rows = list(rows)
        (self.out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        done = max((r["round"] for r in rows), default=0)
        path = self.out / "class_accuracy.jsonl"
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["round"] <= done]
            path.write_text("".join(line + "\n" for line in kept))

    def record(self, row: dict) -> None:
        self.rows.append(row)
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        acc = "   -  " if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        # the unknown-input score's AUROCs ("-": not measured, as in the last round: no class left unlearned)
        aurocs = "".join(f"  {name} {'  -   ' if row[key] is None else format(row[key], '.4f')}"
                         for key, name in (("open_auroc", "open"), ("oos_auroc", "oos")) if key in row)
        spent = f"  epsilon {row['epsilon']:6.3f}" if "epsilon" in row else ""  # under privacy.dp
        self.echo(
            # rounds after the plan's last one only offer failed tasks again
            f"round {row['round']:>3}/{self.rounds}{' (retries)' if row['round'] > self.rounds else ''}  classes {row['classes_seen']:>5}  accuracy {acc}{aurocs}"
            f"  up {human_bytes(row['bytes_up']):>9}  down {human_bytes(row['bytes_down']):>9}{spent}  {row['seconds']:6.2f} s"
        )

    def write_plan(self, plan) -> None:
        """``plan.json``: who learned which classes when (for per-client and forgetting plots)."""
        arrivals = [{"round": a.round, "client": a.client, "task": a.task, "classes": list(a.classes),
                     "revisits": list(a.revisits)} for a in plan.arrivals]
        (self.out / "plan.json").write_text(json.dumps({"rounds": plan.rounds, "clients": plan.clients,
                                                        "arrivals": arrivals}) + "\n")
        (self.out / "class_accuracy.jsonl").write_text("")

    def record_classes(self, server_round: int, ids, correct, total) -> None:
        """One line of ``class_accuracy.jsonl``: per class seen, test samples right and in all."""
        line = {"round": server_round, "ids": [int(i) for i in ids], "correct": [int(c) for c in correct],
                "total": [int(t) for t in total]}
        with (self.out / "class_accuracy.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")

    def finish(self, info: dict) -> dict:
        evaluated = [r for r in self.rows if r["accuracy"] is not None]
        accs = [r["accuracy"] for r in evaluated if not math.isnan(r["accuracy"])]
        up = sum(r["bytes_up"] for r in self.rows)
        learned = self.rows[-1]["classes_learned"] if self.rows else 0
        summary = {
            **info,
            "final_accuracy": accs[-1] if accs else None,
            "average_incremental_accuracy": float(np.mean(accs)) if accs else None,
            "classes_seen": self.rows[-1]["classes_seen"] if self.rows else 0,
            "classes_learned": learned,
            "rounds": len(self.rows),
            "bytes_up": up,
            "bytes_down": sum(r["bytes_down"] for r in self.rows),
            "bytes_up_per_class": up / learned if learned else None,
            **open_set_summary(self.rows),
            "wall_seconds": round(time.time() - self.started, 2),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_accuracy({"": self.rows}, self.out / "accuracy.png")
        self.table(summary)
        return summary

    def table(self, s: dict) -> None:
        def fmt(v):
            return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

        lines = [
            ("scenario", s.get("scenario")),
            ("final accuracy", fmt(s["final_accuracy"])),
            ("average incremental accuracy", fmt(s["average_incremental_accuracy"])),
            ("classes seen / learned", f"{s['classes_seen']} / {s['classes_learned']}"),
            ("rounds", s["rounds"]),
            ("bytes up / down", f"{human_bytes(s['bytes_up'])} / {human_bytes(s['bytes_down'])}"),
            ("bytes up per learned class", "-" if s["bytes_up_per_class"] is None else human_bytes(s["bytes_up_per_class"])),
            *([(f"bytes edges to top ({s['edges']} edges)", human_bytes(s["bytes_up_top"]))] if "bytes_up_top" in s else []),
            ("failed or rejected replies", s.get("failures", 0)),
            ("tasks retried / lost", f"{s.get('retries', 0)} / {s.get('lost_tasks', 0)}"),
            *open_set_lines(s),
            *privacy_lines(s),
            ("wall time", f"{s['wall_seconds']:.1f} s"),
            ("run folder", str(self.out)),
        ]
        width = max(len(k) for k, _ in lines)
        self.echo("")
        for k, v in lines:
            self.echo(f"{k:<{width}}  {v}")
