"""What :mod:`fedrecon.api` asks of the server: a run through ``fedrecon run``'s own path, and an export."""

from __future__ import annotations

import json
from pathlib import Path

from fedrecon.scenario import load_scenario
from server.model_export import export_run

__all__ = ["export_run", "run_folder"]


def run_folder(scenario: str | Path, overrides: dict, out: str | Path | None) -> Path:
    """Run ``scenario`` with ``overrides`` as ``fedrecon run`` does; return its run folder.
    Values go as JSON, which ``--set`` reads as YAML, so strings, numbers, lists and None keep their type."""
    from server.cli import build_parser
    from server.folders import default_out_dir

    sets = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    folder = Path(out) if out is not None else default_out_dir(load_scenario(scenario, sets).name)
    argv = ["run", str(scenario), "--out", str(folder)] + [a for s in sets for a in ("--set", s)]
    args = build_parser().parse_args(argv)
    if args.func(args) != 0:
        raise RuntimeError(f"the run did not finish (run folder {folder})")
    return folder
