"""Flower ServerApp: read the scenario named in the run config and drive it."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrecon.scenario import ScenarioError, load_scenario, scenario_json
from server.node_memory import NodeMemory
from server.polling import POLL_INTERVAL, PollingGrid
from server.prepare import Prepared, prepare
from server.identify import EarlyIdentify
from server.folders import default_out_dir
from server.run import run_scenario

app = ServerApp()


def scenario_path(value: str) -> Path:
    """A relative path is taken from the working directory, else from the app's folder."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return Path(__file__).resolve().parents[1] / path


def resume_scenario(run_dir: str | Path):
    """The scenario a run folder was started with (its ``scenario.json``), through every
    check a new scenario goes through."""
    path = Path(run_dir) / "scenario.json"
    if not path.is_file():
        raise ScenarioError([f"{path}: not found; --resume needs a run folder written by fedrecon run"])
    return load_scenario(path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    poll = float(cfg.get("poll_interval", POLL_INTERVAL))
    resume = str(cfg.get("resume", ""))
    # a resumed run folder brings its own scenario, continued after its checkpoint
    scenario = resume_scenario(resume) if resume else load_scenario(scenario_path(str(cfg["scenario"])))
    out = resume or str(cfg.get("out", "")) or default_out_dir(scenario.name)
    early = None
    if poll > 0:  # the nodes say who they are while the scenario is prepared
        grid = PollingGrid(grid, poll)
        # nodes known from an earlier run get their first task without being asked; secure
        # aggregation's first messages name no client, so there every node is asked
        memory = None if scenario.privacy.secure_aggregation else NodeMemory.default()
        early = EarlyIdentify.ask(grid, memory, scenario_json(scenario))
    run_scenario(grid, prepare(scenario), out, resume=bool(resume), poll_interval=poll, early=early)


def make_app(prep: Prepared, out_dir: str | Path, echo=print, resume: bool = False) -> ServerApp:
    """A ServerApp bound to an already checked scenario (used by ``fedrecon run``)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        run_scenario(grid, prep, out_dir, echo, resume=resume)

    return bound
