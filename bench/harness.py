"""Run `fedrecon run` for a benchmark and read back its run folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fedrecon_run(scenario: str, overrides: list[str], out: Path, reuse: bool = False) -> tuple[dict, list[dict]]:
    """``fedrecon run SCENARIO --set ... --out OUT`` in a fresh process (as a user runs
    it: Flower's simulation engine, Ray workers); its summary and per-round rows.
    ``reuse``: a finished run already in ``out`` is read instead (the caller vouches
    that it ran with the same settings)."""
    if reuse and (out / "summary.json").is_file():
        return _read(out)
    cmd = [sys.executable, "-m", "server.cli", "run", scenario, "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return _read(out)


def forget_weights() -> None:
    """Empty this machine's store of backbone weights, as on a machine that never ran the
    backbone (bench/sim_scale.py: the first round then pays for finding them as a first run
    does). Bytes do not change: ``fedrecon run`` puts the weights where this machine's
    virtual clients read them, so in simulation none travel."""
    from fedrecon.backbones.weights import default_folder

    shutil.rmtree(default_folder(), ignore_errors=True)


def _read(out: Path) -> tuple[dict, list[dict]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), rows


def accuracy_at(rows: list[dict], checkpoints) -> dict[int, float]:
    """Accuracy of the last evaluated round at or below each number of classes seen."""
    at = {}
    for r in rows:
        for c in checkpoints:
            if r["accuracy"] is not None and r["classes_seen"] <= c:
                at[c] = r["accuracy"]
    return at
