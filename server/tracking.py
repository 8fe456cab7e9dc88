"""Experiment tracking: a run logged to MLflow and/or TensorBoard, besides its run folder.

Both are optional extras (``pip install 'fedrecon[mlflow]'``, ``'fedrecon[tensorboard]'``);
``server.prepare`` refuses the ``tracking`` keys with the install command when the
library is missing. What is logged: the scenario (every key, as parameters / text),
every round's row after its checkpoint is written (so a round is logged once, even when
a run is killed and resumed), the summary, and at the end the run folder's files as
artifacts (the checkpoint apart). A resumed run continues the same tracked run: the run
folder's ``tracking.json`` names it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from fedrecon.scenario.scenario import Scenario

# Flower-free numbers of a row that are metrics (the round is the step)
ROW_METRICS = ("accuracy", "classes_seen", "classes_learned", "bytes_up", "bytes_down", "bytes_down_resent",
               "messages_down", "messages_up", "bytes_up_top", "failures", "open_auroc", "oos_auroc",
               "unknown_threshold", "seconds")
INSTALL = {"mlflow": "pip install 'fedrecon[mlflow]' (or: pip install mlflow)",
           "tensorboard": "pip install 'fedrecon[tensorboard]' (or: pip install tensorboard)"}


def flat_keys(value, prefix: str = "") -> dict[str, str]:
    """``{"merge.head": "ncm", ...}``: every key of a nested mapping, values as text (long
    lists shortened: a parameter is a short value)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flat_keys(v, f"{prefix}{k}."))
        return out
    text = json.dumps(value) if not isinstance(value, str) else value
    return {prefix[:-1]: text if len(text) <= 500 else text[:497] + "..."}


def _numbers(row: dict, keys) -> dict[str, float]:
    out = {}
    for k in keys:
        v = row.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class MlflowTracker:
    """One MLflow run a fedrecon run; a folder is an SQLite store with its artifacts beside it."""

    def __init__(self, target: str, experiment: str):
        from mlflow.tracking import MlflowClient

        if "://" in target:
            uri, artifacts = target, None
        else:
            folder = Path(target)
            folder.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment = found.experiment_id if found else self.client.create_experiment(experiment, artifacts)
        self.run_id = ""

    def start(self, scenario: Scenario, out: Path, previous: dict) -> dict:
        from mlflow.entities import Param

        if previous.get("run_id"):
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return {"uri": self.uri, "run_id": self.run_id}
        run = self.client.create_run(self.experiment, run_name=out.name, tags={"run_folder": str(out.resolve())})
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flat_keys(scenario.model_dump(mode="json")).items()]
        for start in range(0, len(params), 100):  # MLflow takes 100 parameters a call
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        return {"uri": self.uri, "run_id": self.run_id}

    def round(self, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["round"])) for k, v in _numbers(row, ROW_METRICS).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict, out: Path) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        numbers = _numbers(summary, summary)
        tags = [RunTag(k, str(v)) for k, v in summary.items() if k not in numbers and v is not None]
        self.client.log_batch(self.run_id, metrics=[Metric(f"summary.{k}", v, now, 0) for k, v in numbers.items()], tags=tags)
        for f in sorted(out.iterdir()):
            if f.is_file() and f.name != "checkpoint.npz":
                self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id)


class TensorBoardTracker:
    """Event files in ``<folder>/<run folder's name>``: scalars by round, the scenario and summary as text."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.writer = None

    def start(self, scenario: Scenario, out: Path, previous: dict) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        logdir = self.folder / out.name
        # a resumed run drops what a killed one wrote after its last checkpoint
        self.writer = SummaryWriter(str(logdir), purge_step=previous.get("next_round"))
        if not previous:
            text = json.dumps(scenario.model_dump(mode="json"), indent=2)
            self.writer.add_text("scenario", "\n".join("    " + line for line in text.splitlines()), 0)
        return {"logdir": str(logdir)}

    def round(self, row: dict) -> None:
        for key, value in _numbers(row, ROW_METRICS).items():
            self.writer.add_scalar(key, value, int(row["round"]))
        self.writer.flush()

    def finish(self, summary: dict, out: Path) -> None:
        text = json.dumps(summary, indent=2)
        self.writer.add_text("summary", "\n".join("    " + line for line in text.splitlines()), 0)
        self.writer.close()


TRACKERS = {"mlflow": lambda t: MlflowTracker(t.mlflow, t.experiment), "tensorboard": lambda t: TensorBoardTracker(t.tensorboard)}


class Tracking:
    """The scenario's trackers, driven by the run: ``start`` (or continue after a resume),
    a row a round, ``finish``."""

    def __init__(self, scenario: Scenario, out: Path):
        self.scenario, self.out = scenario, Path(out)
        self.trackers = {name: make(scenario.tracking) for name, make in TRACKERS.items()
                         if getattr(scenario.tracking, name) is not None}

    def start(self, done: int = 0) -> None:
        if not self.trackers:
            return
        path = self.out / "tracking.json"
        saved = json.loads(path.read_text()) if done and path.is_file() else {}
        state = {}
        for name, tracker in self.trackers.items():
            previous = dict(saved.get(name, {}), next_round=done + 1) if done else {}
            state[name] = tracker.start(self.scenario, self.out, previous)
        path.write_text(json.dumps(state, indent=1) + "\n")

    def round(self, row: dict) -> None:
        for tracker in self.trackers.values():
            tracker.round(row)

    def finish(self, summary: dict) -> None:
        for tracker in self.trackers.values():
            tracker.finish(summary, self.out)
