"""What sets compared runs apart: every scenario key whose value differs between them,
read from each run folder's ``scenario.json`` with the defaults filled in."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from fedrecon.scenario.scenario import Scenario

# The settings a reader looks for first; said once above the table when the runs share them.
HEADLINE = ("merge.method", "merge.prototypes", "merge.head", "model.backbone", "privacy.secure_aggregation", "privacy.dp")

# A run folder without scenario.json (made before it was written): what its summary says.
FROM_SUMMARY = {"name": "scenario", "merge.prototypes": "merge", "merge.head": "head", "model.backbone": "backbone",
                "privacy.secure_aggregation": "secure_aggregation", "privacy.dp": "dp"}


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        out: dict[str, object] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def show(value) -> str:
    """A setting's value as a table cell: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def run_settings(folder: Path, summary: dict) -> dict[str, object] | None:
    """Every scenario key of a run, defaults included (dotted keys, values as in JSON);
    None when the folder has no ``scenario.json``. A file an older fedrecon wrote that
    no longer validates is compared as written."""
    path = folder / "scenario.json"
    if not path.is_file():
        return None
    text = path.read_text()
    try:
        full = Scenario.model_validate_json(text).model_dump(mode="json")
    except ValidationError:
        try:
            full = json.loads(text)
        except ValueError:  # not JSON at all: compared by its summary
            return None
    if not isinstance(full, dict):
        return None
    settings = _flat(full)
    # privacy.dp is a section or null: whether it is on is a key of its own (its sub-keys
    # say how), as the summary's "dp" says
    settings["privacy.dp"] = (full.get("privacy") or {}).get("dp") is not None
    return settings


def summary_settings(summary: dict) -> dict[str, object]:
    return {key: summary[field] for key, field in FROM_SUMMARY.items() if field in summary}


def differing(settings: list[dict[str, object]]) -> list[str]:
    """The keys whose values are not the same in every run (a key a run lacks counts as a
    value), in the scenario's order."""
    keys = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in keys if len({show(s[k]) if k in s else "\0" for s in settings}) > 1]


def compared(folders: list[Path], summaries: list[dict]) -> tuple[list[dict[str, object]], list[str], dict[str, str]]:
    """Each run's settings, the keys that differ and the headline settings all share.

    Runs compare by their scenario.json when every folder has one, else by what every
    summary says (so that one old folder does not make every key differ)."""
    full = [run_settings(f, s) for f, s in zip(folders, summaries)]
    settings = full if all(s is not None for s in full) else [summary_settings(s) for s in summaries]
    keys = differing(settings) if len(settings) > 1 else []
    # where DP is on in some runs only, privacy.dp says so; its sub-keys would repeat it
    keys = [k for k in keys if not (k.startswith("privacy.dp.") and "privacy.dp" in keys)]
    same = {k: show(settings[0][k]) for k in HEADLINE if settings and k in settings[0] and k not in keys
            and all(k in s for s in settings)}
    return settings, keys, same


def label(name: str, settings: dict[str, object], keys: list[str], most: int = 3) -> str:
    """A run's name in a legend: its folder's name and its differing settings (the key's
    last part, ``head=lda``), the headline ones first, at most ``most`` of them."""
    named = sorted((k for k in keys if k != "name"), key=lambda k: HEADLINE.index(k) if k in HEADLINE else len(HEADLINE))
    shown = [f"{k.rsplit('.', 1)[-1]}={_short(settings.get(k))}" for k in named][:most]
    more = ", ..." if len(named) > most else ""
    return f"{name} ({', '.join(shown)}{more})" if shown else name


def _short(value) -> str:
    if isinstance(value, str) and "/" in value:  # a path: its file's name tells runs apart
        value = value.rstrip("/").rsplit("/", 1)[-1]
    text = "null" if value is None else show(value)
    return text if len(text) <= 24 else text[:21] + "..."
