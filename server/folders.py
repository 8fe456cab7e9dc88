"""Where a command writes when it is given no ``--out``: one rule for every command."""

from __future__ import annotations

import time
from pathlib import Path

# Under the working folder, as every relative --out is: the folder fedrecon is run from.
RUNS = Path("runs")


def default_out_dir(name: str) -> Path:
    """``runs/<name>-<date>-<time>`` under the working folder: a run's folder is named for its
    scenario, a report's ``report``; a new folder each time, so none overwrites another."""
    return RUNS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
