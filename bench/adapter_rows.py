"""The adapter benchmark's rows and scenarios (bench/adapters.py), and how a row's run is set up."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from fedrecon.data.dataset import ClassDataset
from fedrecon.data.registry import load_dataset
from fedrecon.plan import Plan, make_plan, merge_arrivals
from fedrecon.scenario import Scenario, ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[1]

# (label, overrides) of each row; the adapter rows share the scenario's adapters section
# Every row says its adapter keys, so that a scenario file with adapters runs the frozen rows too.
FROZEN = ["adapters.schedule=frozen", "merge.adapters=none", "adapters.steps=0", "adapters.features=adapted"]
ROWS = [
    ("frozen ncm", ["merge.head=ncm", *FROZEN]),
    ("frozen ridge", ["merge.head=ridge", *FROZEN]),
    ("frozen lda", ["merge.head=lda", *FROZEN]),
    *[(f"{policy} {schedule}", [f"merge.adapters={policy}", f"adapters.schedule={schedule}", "adapters.steps=0"])
      for schedule in ("first_task", "every_task") for policy in ("none", "fedavg", "ffa", "stack")],
    # adapter steps: a round's trainers train one adapter together, then summarise under it
    *[(f"{policy} first_task steps {n}", [f"merge.adapters={policy}", "adapters.schedule=first_task", f"adapters.steps={n}"])
      for policy in ("fedavg", "ffa", "stack") for n in (1, 3)],
    ("stack every_task ncm keep", ["merge.adapters=stack", "adapters.schedule=every_task", "merge.head=ncm",
                                   "adapters.steps=0"]),
    ("stack every_task ncm compensate", ["merge.adapters=stack", "adapters.schedule=every_task", "merge.head=ncm",
                                         "adapters.staleness=compensate", "adapters.steps=0"]),
]

# Settings of each benchmarked scenario: its file, adapter settings, and what --quick changes.
SCENARIOS = {
    "clinc150": ("scenarios/clinc150-domains.yaml",
                 ["merge.head=ridge", "adapters.rank=8", "adapters.lr=3e-4", "adapters.lr_later=3e-5", "adapters.epochs=1",
                  "adapters.alpha=16", "adapters.batch_size=64", "adapters.drift_sigma=0.3"],
                 ["tasks.train_shots=20", "tasks.test_shots=10"]),
    # the same ten domains, all in round 1: ten clients adapt at once (adapter steps' case);
    # the scenario file holds the settings (lr 1e-3: statistics follow the merged adapter)
    "clinc150-adapters": ("scenarios/clinc150-domains-adapters.yaml", [], ["tasks.train_shots=20", "tasks.test_shots=10"]),
    # one domain a round, the adapter frozen after round 1, frozen and adapted features side by side
    "clinc150-staggered-adapters": ("scenarios/clinc150-staggered-adapters.yaml", [],
                                    ["tasks.train_shots=20", "tasks.test_shots=10"]),
    "hwu64": ("scenarios/hwu64-dirichlet.yaml",
              ["merge.head=ridge", "adapters.rank=8", "adapters.lr=3e-4", "adapters.lr_later=3e-5", "adapters.epochs=1",
               "adapters.alpha=16", "adapters.batch_size=64", "adapters.drift_sigma=0.3"],
              ["tasks.train_shots=20", "tasks.test_shots=10"]),
    # ImageNet's EfficientNet-Lite0 on handwritten characters: the domain gap adapters are for;
    # the scenario file holds the settings (--quick: 40 classes)
    "omniglot-efficientnet": ("scenarios/omniglot-efficientnet-adapters.yaml", [], ["tasks.num_classes=40"]),
    "omniglot": ("scenarios/omniglot-alphabets.yaml",
                 ["merge.head=ncm", "adapters.rank=4", "adapters.lr=2e-4", "adapters.lr_later=2e-5", "adapters.epochs=2",
                  "adapters.batch_size=32", "adapters.loss=prototypical", "adapters.drift_sigma=3.0"],
                 []),
}


@dataclass(frozen=True)
class Setup:
    """One row's run: its scenario, dataset and plan."""

    scenario: Scenario
    dataset: ClassDataset
    plan: Plan


def setup_of(scenario: Scenario) -> Setup:
    dataset = load_dataset(scenario.data)
    train, test = dataset.split_indices()
    return Setup(scenario, dataset, make_plan(scenario, train, dataset.groups, test))


def row_scenario(name: str, label: str, path: str, overrides: list[str]) -> Scenario | None:
    """A row's scenario, or None (said on stderr) when the scenario check refuses the
    row's settings: a file with adapter steps and ``until_round``, say, has no
    ``steps: 0`` rows."""
    try:
        return load_scenario(ROOT / path, overrides)
    except ScenarioError as exc:
        print(f"{name} / {label}: skipped, the scenario check refuses it: {exc.problems[0]}", file=sys.stderr)
        return None


def pooled(setup: Setup) -> Setup:
    """The same rows with every training sample in one task at one site (round 1): the
    adapter trains on all classes at once, so no statistic goes stale. Not continual
    learning: the upper bound of what the adapter can give the head."""
    one = merge_arrivals([replace(a, client=0) for a in setup.plan.arrivals], 1)
    plan = replace(setup.plan, rounds=1, clients=1, arrivals=(replace(one, client=0, task=0),), present=())
    return Setup(setup.scenario, setup.dataset, plan)
