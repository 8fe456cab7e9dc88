"""One federated run of a prepared scenario: set up, the rounds, finish.

A round reads top to bottom (:meth:`Run.round`): find the clients' nodes, the adapter
steps if any, the task messages and their replies, evaluation on the clients if
asked, then score, record and checkpoint. The strategy's ``configure_*`` methods only
build messages and its ``aggregate_*`` methods only read replies; sending is done
here, on the Grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from fedrecon.learning.finetune import initial_model
from fedrecon.plan.edges import tiers
from fedrecon.protocol import setup_record
from fedrecon.scenario.loading import scenario_json
from server.checkpoint import load_parts, load_run_state, save_run_state
from server.identify import EarlyIdentify
from server.message_log import MessageLog
from server.polling import PollingGrid
from server.prepare import Prepared
from server.progress import Progress
from server.report import RunRecorder
from server.scoring import Scoring
from server.tracking import Tracking
from strategies.adapter_steps import AdapterSteps
from strategies.finetune import FedAvgFinetune
from strategies.recon import ReconStrategy
from strategies.secure import SecureRecon

# Seconds to wait for every client's node to connect, and for identify answers.
NODE_WAIT = 300.0


def _prototype_strategy(prep: Prepared, setup: dict) -> ReconStrategy:
    s = prep.scenario
    # the scenario check refuses adapter steps together with secure aggregation
    kind = AdapterSteps if s.adapters.steps else SecureRecon if s.privacy.secure_aggregation else ReconStrategy
    # a wheel's weights are installed at every client: only their digest travels
    backbone = {} if prep.entry.weights == "installed" else prep.weights
    return kind(prep.plan, prep.scenario, setup, backbone, prep.dim, prep.adapted.shapes() if prep.adapted else None)


def _finetune_strategy(prep: Prepared, setup: dict) -> ReconStrategy:
    return FedAvgFinetune(prep.plan, prep.scenario, setup, initial_model(prep.model, prep.dim), prep.dim)


# keyed by merge.method
STRATEGIES = {"prototypes": _prototype_strategy, "fedavg_finetune": _finetune_strategy}


def make_strategy(prep: Prepared) -> ReconStrategy:
    return STRATEGIES[prep.scenario.merge.method](prep, setup_record(scenario_json(prep.scenario), prep.digest))


class Run:
    """Drives a prepared scenario on a Flower Grid and writes its run folder.

    Parameters
    ----------
    grid : Grid
        Flower's Grid (simulation or deployment).
    prep : Prepared
        The checked scenario, data, plan and backbone.
    out_dir : str or Path
        The run folder (with ``resume``, one holding a checkpoint: its rounds are not run again).
    poll_interval : float
        Seconds between two pulls for replies; 0 keeps the Grid's own ``send_and_receive``.
    progress : Progress or None
        Where progress inside a round goes (None: nowhere).
    early : EarlyIdentify or None
        Identify queries sent before the scenario was prepared (on ``grid``).
    """

    def __init__(self, grid, prep: Prepared, out_dir: str | Path, echo=print, poll_interval: float = 0.2,
                 progress: Progress | None = None, early: EarlyIdentify | None = None):
        wrap = poll_interval > 0 and not isinstance(grid, PollingGrid)
        self.grid = PollingGrid(grid, poll_interval) if wrap else grid
        self.early = early
        self.memory = early.memory if early is not None else None
        self.connected = False  # every client's node has been seen once
        self.prep, self.scenario, self.plan = prep, prep.scenario, prep.plan
        self.tiers = tiers(prep.scenario.clients) > 1  # edges and a top tier here
        self.strategy = make_strategy(prep)
        self.scoring = Scoring(prep, self.strategy)
        self.recorder = RunRecorder(out_dir, self.plan.rounds, echo)
        self.log = MessageLog(self.recorder.out / "messages.jsonl")
        self.tracking = Tracking(self.scenario, self.recorder.out)
        self.echo = echo
        self.progress = progress or Progress.silent()
        self.timeout = self.scenario.simulation.timeout
        self.done = 0  # rounds finished (and checkpointed)
        self.arrays = ArrayRecord({})  # the merged statistics, as the evaluate messages carry them

    # --- set up ----------------------------------------------------------------------------------

    def start(self) -> None:
        """A new run folder: the scenario as run and the plan."""
        (self.recorder.out / "scenario.json").write_text(scenario_json(self.scenario) + "\n")
        self.recorder.write_plan(self.plan)
        self.tracking.start()

    def resume(self) -> None:
        """Continue after the folder's last checkpoint."""
        done, stats, state = load_run_state(self.recorder.out)
        self.strategy.restore(state["strategy"], stats, state.get("model_arrays"))
        if self.strategy.own is not None:
            self.strategy.own = load_parts(self.recorder.out)
        self.recorder.restore(state["rows"])
        self.done = done
        self.tracking.start(done)
        self.echo(f"fedrecon: resuming {self.recorder.out} after round {done}")

    # --- a round -----------------------------------------------------------------------------------

    def exchange(self, messages: list, server_round: int, phase: str) -> list:
        """Send a phase's messages and wait for their replies (at most the round timeout)."""
        if not messages:
            return []
        began = time.perf_counter()
        with self.progress.phase(server_round, phase, len(messages)) as seen:
            if isinstance(self.grid, PollingGrid):
                self.grid.watch = seen
            replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        self.log_messages(server_round, phase, replies, time.perf_counter() - began)
        return replies

    def log_messages(self, server_round: int, phase: str, replies: list, seconds: float) -> None:
        clients = {node: client for client, node in self.strategy.nodes.ids.items()}
        self.log.replies(server_round, phase, replies, seconds, clients)

    def log_server(self, server_round: int, phase: str, seconds: float) -> None:
        self.log.server(server_round, phase, seconds)

    def identify(self) -> None:
        """Map partition ids to nodes: wait for every node the first time; later, ask only
        the nodes not known yet (a restarted SuperNode) and drop the ones gone."""
        nodes = self.strategy.nodes
        if self.early is not None:
            began = time.perf_counter()
            nodes.assume(self.early.assumed)
            replies = self.early.answers(NODE_WAIT)
            nodes.aggregate_identify(replies, warn=False)
            self.log_messages(self.done + 1, "identify (early)", replies, time.perf_counter() - self.early.began)
            self.log_server(self.done + 1, "identify (early): the round's wait", time.perf_counter() - began)
            self.early = None
        if not self.connected:
            with self.progress.phase(self.done + 1, "clients", nodes.clients, "connected") as seen:
                nodes.wait_for_all(self.grid, NODE_WAIT, seen)
            self.connected = True
        queries = nodes.configure_identify(list(self.grid.get_node_ids()))
        if not queries and self.waits_for_missing():
            # every client with work this round is away (a SuperNode restarting): rather than
            # spend the round, give them one round timeout to come back
            deadline = time.monotonic() + self.timeout
            while not queries and time.monotonic() < deadline:
                time.sleep(1.0)
                queries = nodes.configure_identify(list(self.grid.get_node_ids()))
        began = time.perf_counter()
        # a node that died may stay listed until Flower's heartbeat gives up on it: wait for
        # its answer no longer than for a task's
        replies = list(self.grid.send_and_receive(queries, timeout=self.timeout)) if queries else []
        nodes.aggregate_identify(replies)
        self.log_messages(self.done + 1, "identify", replies, time.perf_counter() - began)
        self.remember()

    def remember(self) -> None:
        """Keep the confirmed node of each client for the next run on these nodes."""
        if self.memory is not None:
            self.memory.remember(self.strategy.nodes.confirmed())

    def waits_for_missing(self) -> bool:
        """True when the next round has work and all of it is for clients not connected."""
        server_round = self.done + 1
        working = {client for client, parts in self.strategy.book.waiting.items() if parts}
        if server_round <= self.plan.rounds:
            working |= {a.client for a in self.plan.arrivals_at(server_round)}
        return bool(working) and working <= set(self.strategy.nodes.missing())

    def adapter_steps(self, server_round: int) -> None:
        """The round's trainers train the merged adapter, step by step (AdapterSteps only)."""
        if not isinstance(self.strategy, AdapterSteps):
            return
        steps = self.strategy.steps(server_round)
        for step in range(steps):
            replies = self.exchange(self.strategy.configure_adapt(server_round, step), server_round,
                                    f"adapter step {step + 1}/{steps}")
            if not self.strategy.aggregate_adapt(server_round, step, replies):
                break  # no one trains this round (first_task: later tasks): no more steps

    def secure_setup(self, server_round: int) -> None:
        """Secure aggregation's first steps: the round's clients exchange keys and shares (SecureRecon only)."""
        if not isinstance(self.strategy, SecureRecon):
            return
        s = self.strategy
        s.aggregate_keys(server_round, self.exchange(s.configure_keys(server_round), server_round, "secure sum: keys"))
        s.aggregate_shares(server_round, self.exchange(s.configure_shares(server_round), server_round, "secure sum: shares"))

    def secure_unmask(self, server_round: int) -> None:
        """Secure aggregation's last step: the survivors' shares unmask the round's sum, which is folded in."""
        if not isinstance(self.strategy, SecureRecon):
            return
        s = self.strategy
        s.aggregate_unmask(server_round, self.exchange(s.configure_unmask(server_round), server_round, "secure sum: unmask"))

    def train(self, server_round: int) -> None:
        messages = self.strategy.configure_train(server_round, self.arrays, ConfigRecord(), self.grid)
        arrays, _ = self.strategy.aggregate_train(server_round, self.exchange(messages, server_round, "tasks"))
        self.arrays = arrays if arrays is not None else self.arrays

    def evaluate_on_clients(self, server_round: int) -> None:
        messages = self.strategy.configure_evaluate(server_round, self.arrays, ConfigRecord(), self.grid)
        self.strategy.aggregate_evaluate(server_round, self.exchange(messages, server_round, "evaluation on the clients"))

    def round(self, server_round: int) -> None:
        began = time.time()
        self.identify()
        self.adapter_steps(server_round)
        self.secure_setup(server_round)
        self.train(server_round)
        self.secure_unmask(server_round)
        self.evaluate_on_clients(server_round)
        self.after_round(server_round, began)

    def after_round(self, server_round: int, began: float) -> None:
        """Score, record and checkpoint a round that did something (its seconds include the scoring)."""
        if not self.strategy.active(server_round):
            return
        scoring = time.perf_counter()
        accuracy, per_class = self.scoring.score(server_round)
        self.log_server(server_round, "scoring", time.perf_counter() - scoring)
        if per_class is not None:
            self.recorder.record_classes(server_round, *per_class)
        traffic = self.strategy.traffic.of(server_round)
        row = {
            "round": server_round,
            "classes_seen": int(len(self.plan.classes_seen(server_round))),
            "classes_learned": self.strategy.classes_learned(),
            "accuracy": accuracy,
            "bytes_up": traffic["bytes_up"],
            "bytes_down": traffic["bytes_down"],
            "bytes_down_resent": traffic["bytes_down_resent"],
            "messages_down": traffic["messages_down"],
            "messages_up": traffic["messages_up"],
            **({"bytes_up_top": traffic["bytes_up_top"]} if self.tiers else {}),
            "failures": sum(f["round"] == server_round for f in self.strategy.failures),
            "seconds": round(time.time() - began, 3),
        }
        self.recorder.record(row)
        save_run_state(self.recorder.out, server_round, self.strategy.stats,
                       {"strategy": self.strategy.state(), "rows": self.recorder.rows},
                       self.strategy.own, self.strategy.model_arrays())
        self.done = server_round
        self.tracking.round(row)  # after the checkpoint: a round a killed run repeats is logged once

    # --- the whole run -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Every round from the first not done; rounds after the plan's last only offer
        failed tasks again, at most ``faults.retries`` of them, while any wait."""
        self.strategy.summary()
        last = self.plan.rounds + self.scenario.faults.retries
        for server_round in range(self.done + 1, last + 1):
            if server_round > self.plan.rounds and not self.strategy.book:
                break
            self.round(server_round)
        return self.finish()

    def finish(self) -> dict:
        s, strategy = self.scenario, self.strategy
        # a task still waiting here had no round left (its client away, or out of tries)
        strategy.book.give_up(self.done, "still waiting when the run ended (its client away, or no round left)")
        self.remember()
        np.savez(self.recorder.out / "stats.npz", **strategy.stats.to_arrays())
        finetuning = s.merge.method == "fedavg_finetune"
        summary = self.recorder.finish({
            "scenario": s.name,
            "clients": s.clients.count,
            "merge": s.merge.method if finetuning else s.merge.prototypes,
            "adapters": f"{s.adapters.schedule}/{s.merge.adapters}",
            "head": s.merge.head,
            "backbone": s.model.backbone,
            "backbone_digest": self.prep.digest,
            "evaluation": s.evaluation.where,
            "failures": len(strategy.failures),
            "retries": strategy.book.retries,
            "lost_tasks": len(strategy.book.lost),
            "bytes_down_resent": sum(r["bytes_down_resent"] for r in self.recorder.rows),
            **({"edges": s.clients.edges, "bytes_up_top": sum(r["bytes_up_top"] for r in self.recorder.rows)}
               if self.tiers else {}),
            **({"edge": s.clients.edge} if s.clients.edge is not None else {}),
            **(strategy.budget.summary() if getattr(strategy, "budget", None) is not None else {}),
        })
        self.tracking.finish(summary)
        return summary


def run_scenario(grid, prep: Prepared, out_dir: str | Path, echo=print, resume: bool = False,
                 poll_interval: float = 0.2, early: EarlyIdentify | None = None) -> dict:
    """Drive the scenario on ``grid`` and write the run folder; return the summary.
    Progress inside a round goes where the round lines go, when they go to the console."""
    progress = Progress(prep.plan.rounds) if echo is print else None
    run = Run(grid, prep, out_dir, echo, poll_interval, progress, early)
    run.resume() if resume else run.start()
    return run.run()


def default_out_dir(scenario) -> Path:
    return Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
