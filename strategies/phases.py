"""The server state and a round's phases, chosen once from the scenario."""

from __future__ import annotations

from fedrecon.plan.records import Plan
from fedrecon.scenario import Scenario
from strategies.adapter_steps import AdapterSteps
from strategies.client_evaluation import ClientEvaluation
from strategies.finetune import Finetune
from strategies.nodes import Nodes
from strategies.prototypes import Prototypes
from strategies.rounds import Phase
from strategies.secure import MaskedTasks, SecureKeys, SecureShares, Unmask
from strategies.secure_counts import SecureCounts
from strategies.setup import NodeSetup
from strategies.site_model import SiteModel
from strategies.sites import SiteLearning
from strategies.state import ServerState
from strategies.tasks import TaskMessages, Tasks
from strategies.unknown_threshold import UnknownThreshold, skipped_because


def round_phases(scenario: Scenario, setup: NodeSetup) -> list[Phase]:
    """A round's phases after the nodes are identified: the adapter steps, secure
    aggregation's keys and shares, the task messages (class statistics, or the model
    under ``fedavg_finetune``), the unmasking, evaluation on the clients, the unknown-input
    threshold's exchange (where the scenario allows it). The scenario
    check refuses adapter steps with secure aggregation, and both with fine-tuning."""
    if scenario.sites is not None:
        return site_phases(scenario, setup)
    learning = Finetune() if scenario.merge.method == "fedavg_finetune" else Prototypes()
    tasks = TaskMessages(scenario, learning, setup)
    phases: list[Phase] = []
    if scenario.adapters.active and scenario.adapters.steps:
        phases.append(AdapterSteps(setup))
    if scenario.privacy.secure_aggregation:
        phases += [SecureKeys(scenario.privacy.threshold), SecureShares(), MaskedTasks(tasks), Unmask()]
    else:
        phases.append(Tasks(tasks))
    if scenario.evaluation.where == "clients":
        phases.append(ClientEvaluation(setup))
    if skipped_because(scenario) is None:
        secure = SecureCounts(scenario.privacy.threshold) if scenario.privacy.secure_aggregation else None
        phases.append(UnknownThreshold(setup, secure))
    return phases


TEST_COUNTS_OFFSET = 1 << 30  # rounds never reach it


def site_phases(scenario: Scenario, setup: NodeSetup) -> list[Phase]:
    """A site round: the site tasks (in the clear, or as a secure sum), then the merged
    model's changes to every site and their test counts (summed, or securely summed)."""
    tasks = TaskMessages(scenario, SiteLearning(), setup)
    secure = scenario.privacy.secure_aggregation
    phases: list[Phase] = [SecureKeys(scenario.privacy.threshold), SecureShares(), MaskedTasks(tasks), Unmask()] \
        if secure else [Tasks(tasks)]
    if skipped_because(scenario) is None:  # sites score what they merged: the threshold goes with the model
        phases.append(UnknownThreshold(setup, SecureCounts(scenario.privacy.threshold) if secure else None))
    # the test counts' secure sum: its SecAgg+ ids clear of the threshold's (-round)
    counts = SecureCounts(scenario.privacy.threshold, 2, "test-count sum", TEST_COUNTS_OFFSET) if secure else None
    return [*phases, SiteModel(setup, counts)]


def server_state(plan: Plan, scenario: Scenario, setup: dict[str, str], dim: int, adapter_shapes: dict | None = None,
                 model: dict | None = None) -> ServerState:
    """A new run's state. ``setup``: the run's setup record (its digests name what a node
    must hold); ``model``: ``fedavg_finetune``'s global model before any task."""
    # on a Ray cluster a virtual client's answer and its task may run on different machines:
    # what one machine holds says nothing of the other's, so every setup brings the weights
    weights_claims = setup["backbone_digest"] if scenario.simulation.ray_address is None else ""
    nodes = Nodes(plan.clients, setup["digest"], weights_claims, setup["scenario"])
    return ServerState(plan, scenario, nodes, dim, adapter_shapes, model)
