"""``fedrecon.run`` and ``fedrecon.export``: a scenario run and its model exported, from Python.

Running a scenario is the server's work (Flower's simulation engine, the ServerApp), and
the core imports no app (pyproject.toml's import contracts). These two functions are the
one place where it does: each imports :mod:`server.api` when called, never when fedrecon
is imported, and the contract names this one edge (``fedrecon.api -> server.api``) as its
only exception, so every other core module is still checked for Flower and app imports,
direct or not. Kept in the core, rather than as a ``server`` function users import, because
``fedrecon.run`` is where a user looks; :func:`fedrecon.load_model` needs no server at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunResult:
    """A finished run: ``summary`` (summary.json), ``rows`` (metrics.jsonl, one a round)
    and ``folder``, the run folder (``fedrecon export`` and ``fedrecon report`` read it)."""

    summary: dict
    rows: list[dict]
    folder: Path

    @classmethod
    def read(cls, folder: str | Path) -> "RunResult":
        """The result a run folder holds."""
        folder = Path(folder)
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return cls(json.loads((folder / "summary.json").read_text()), rows, folder)


def run(scenario: str | Path, overrides: Mapping[str, Any] | None = None, out: str | Path | None = None) -> RunResult:
    """Run a scenario file on Flower's simulation engine, as ``fedrecon run`` does.

    Parameters
    ----------
    scenario : str or Path
        A scenario YAML file.
    overrides : mapping, optional
        ``{"key.path": value}``, as ``--set key.path=value`` (e.g. ``{"merge.head": "lda"}``).
    out : str or Path, optional
        The run folder (default: ``runs/<name>-<time>``).

    Raises
    ------
    fedrecon.scenario.ScenarioError
        The scenario, its data or its backbone fails a check (every problem listed).
    RuntimeError
        The run did not finish.
    """
    from server.api import run_folder

    return RunResult.read(run_folder(scenario, dict(overrides or {}), out))


def export(run_dir: str | Path, out: str | Path, round: int | None = None, unknown_threshold: float | None = None,
           format: str = "safetensors") -> dict:
    """Write the classifier of a run folder as a model folder (``fedrecon export``); return its
    manifest. ``format``: ``safetensors`` (runs in torch) or ``onnx`` (one graph for onnxruntime)."""
    from fedrecon.model.onnx_export import export_as
    from server.api import export_run

    return export_as(format, lambda folder: export_run(run_dir, folder, round, unknown_threshold), out)
