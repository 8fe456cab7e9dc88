"""``fedrecon export``'s reading of a run folder: its scenario, checkpoint and metrics.

The run's backbone and data are prepared again from the folder's own scenario (the
class names come from the dataset), the merged statistics and adapter are read from
the checkpoint of the round asked for (the last, or one the folder kept:
:mod:`server.checkpoint`), as a resumed run reads them;
:func:`fedrecon.model.export.write_model` writes the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedrecon.learning.adapter_task import AdapterServer
from fedrecon.model.export import ClassNames, refusal, write_model
from fedrecon.model.folder import ModelError
from fedrecon.scenario import load_scenario
from server.checkpoint import CHECKPOINT, CheckpointError, load_round


def round_row(run_dir: Path, done: int) -> dict:
    """The metrics row of round ``done`` (empty when metrics.jsonl lacks it)."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return next((r for r in rows if r.get("round") == done), {})


def export_run(run_dir: str | Path, out: str | Path, round: int | None = None,
               unknown_threshold: float | None = None) -> dict:
    """Export the classifier of ``run_dir`` after ``round`` (None: its last checkpointed
    round; an earlier one if the folder kept it, ``checkpoints.keep``) to the model folder
    ``out``; return the manifest. Inputs whose unknown-input score is above
    ``unknown_threshold`` will be labelled ``unknown``."""
    from server.prepare import prepare

    run_dir = Path(run_dir)
    if not (run_dir / "scenario.json").is_file():
        raise ModelError(f"{run_dir}: not a run folder (no scenario.json; fedrecon run writes one)")
    if not (run_dir / CHECKPOINT).is_file():
        raise ModelError(f"{run_dir}: no {CHECKPOINT}: the run finished no round")
    try:  # round N's statistics and adapter, as its checkpoint held them
        done, stats, state = load_round(run_dir, round)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    scenario_text = (run_dir / "scenario.json").read_text()
    scenario = load_scenario(run_dir / "scenario.json")
    why = refusal(scenario)
    if why:  # before preparing the data and backbone
        raise ModelError(why)
    prep = prepare(scenario)
    if prep.adapted is not None:
        # the adapter the server scored with after the last merge (Scoring.score): a
        # client's start from the merged state; its B is the merged one (or zero), so the
        # update does not depend on the client or round asked for
        adapters = AdapterServer(prep.adapted.shapes(), scenario)
        if state.get("model_arrays"):
            adapters.state = dict(state["model_arrays"])
        prep.adapted.load(adapters.start_for(0, done + 1))
    row = round_row(run_dir, done)
    run = {"run": str(run_dir.resolve()), "round": done, "rounds": prep.plan.rounds,
           "accuracy": row.get("accuracy"), "classes_seen": row.get("classes_seen")}
    threshold, chosen = shipped_threshold(scenario, state, done, unknown_threshold)
    # a site run's class names are those the sites sent (the server holds no dataset)
    dataset = prep.dataset if scenario.sites is None else \
        ClassNames(dict(enumerate(state.get("server", {}).get("sites", {}).get("names", []))))
    if scenario.sites is not None and scenario.privacy.dp is not None:  # the classes a site's model holds
        from fedrecon.dp import PRESENCE_STDS, present

        stats = present(stats, PRESENCE_STDS * float(state["server"]["sites"].get("noise", 0.0)) ** 0.5)
    return write_model(out, scenario=scenario, dataset=dataset, stats=stats, model=prep.model,
                       adapted=prep.adapted, entry=prep.entry, dim=prep.dim, run=run, scenario_text=scenario_text,
                       unknown_threshold=threshold, unknown_chosen=chosen)


def shipped_threshold(scenario, state: dict, done: int, given: float | None) -> tuple[float | None, dict]:
    """The unknown threshold an export of round ``done`` ships, and how it was chosen: the
    user's (``given``), else the one the federation chose that round from the clients'
    binned training scores (:mod:`strategies.unknown_threshold`), else none, with why."""
    from strategies.unknown_threshold import skipped_because

    if given is not None:
        return given, {"chosen_by": "user"}
    chosen = state.get("server", {}).get("unknown", {}).get(str(done))
    if chosen and chosen.get("threshold") is not None:
        return float(chosen["threshold"]), {"chosen_by": "federation", "quantile": chosen["quantile"],
                                            "samples": chosen["samples"], "complete": chosen["complete"]}
    why = skipped_because(scenario) or (f"round {done} made no threshold exchange (not evaluated, or no client "
                                        f"answered)")
    return None, {"chosen_by": None, "why": why}
