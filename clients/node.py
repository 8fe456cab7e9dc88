"""What a node keeps between messages: the run's setup and the backbone (and, under
``merge.adapters: none``, its own adapter).

All of it lives in ``Context.state`` (in deployment every message runs in a new
process). What is immutable and named by a digest (the parsed scenario, a built
frozen backbone) is cached per process as well: virtual clients that share a process
may share it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message

from fedrecon import protocol as P
from fedrecon.data.cache import DiskCache
from fedrecon.scenario.loading import scenario_from_json
from fedrecon.scenario.model import Scenario

SETUP = "setup"  # Context.state key
LOCAL_ADAPTER = "local_adapter"  # Context.state key: this client's own factors (merge.adapters: none)
_SCENARIOS: dict[str, Scenario] = {}  # setup digest -> the scenario it holds


class WrongNode(RuntimeError):
    """A message meant for another client (the server assumed the wrong node): refused unread."""


class NoSetup(RuntimeError):
    """The node holds no setup for this run (it restarted since it got one): the server sends it again."""


@dataclass(frozen=True)
class Setup:
    """The run as this node sees it: the scenario (``data.root`` the node's own when
    its node config names a ``data-root``), the backbone's digest, the node's partition
    id, and its disk cache of prepared samples and features (None: none)."""

    scenario: Scenario
    backbone_digest: str
    client: int
    cache: DiskCache | None = None


def node_cache(node_config: dict) -> DiskCache | None:
    """The node's disk cache: the node config's ``cache-dir`` (and ``cache-mb``; ``none``:
    off), else ``$FLWR_HOME/fedrecon-cache`` for a SuperNode (every message is a new
    process there), else none (a simulation's workers keep what they prepared in memory)."""
    folder = node_config.get("cache-dir") or (Path(os.environ["FLWR_HOME"]) / "fedrecon-cache"
                                              if os.environ.get("FLWR_HOME") else None)
    if not folder or str(folder) == "none":
        return None
    return DiskCache(Path(str(folder)), int(float(node_config.get("cache-mb", 2048)) * 2**20))


def setup(msg: Message, context: Context) -> Setup:
    """The setup this message brings (kept in the node's context), else the kept one."""
    if P.FOR_CLIENT in msg.content:
        meant, mine = int(msg.content[P.FOR_CLIENT]["partition_id"]), int(context.node_config["partition-id"])
        if meant != mine:
            raise WrongNode(f"this message is for client {meant}, and this node is client {mine}")
    if P.SETUP in msg.content:
        context.state[SETUP] = msg.content[P.SETUP]
        context.state[P.BACKBONE] = msg.content[P.BACKBONE] if P.BACKBONE in msg.content else ArrayRecord({})
    if SETUP not in context.state:
        raise NoSetup("this node holds no setup for the run (restarted?); the server sends it with the next task")
    return setup_from(setup_record(context), context.node_config)


def setup_record(context: Context) -> dict:
    """The setup this node holds as plain values (digest, scenario JSON, backbone digest)."""
    record = context.state[SETUP]
    return {k: str(record[k]) for k in ("digest", "scenario", "backbone_digest")}


def setup_from(record: dict, node_config) -> Setup:
    """The Setup of a setup record on the node of ``node_config`` (also the node's worker's way in)."""
    digest = record["digest"]
    if digest not in _SCENARIOS:
        _SCENARIOS[digest] = scenario_from_json(record["scenario"])
    scenario = _SCENARIOS[digest]
    # a real deployment keeps its data where it likes; the node config says where
    root = node_config.get("data-root")
    if root:
        scenario = scenario.model_copy(update={"data": scenario.data.model_copy(update={"root": str(root)})})
    return Setup(scenario, record["backbone_digest"], int(node_config["partition-id"]), node_cache(node_config))


def held_digest(context: Context) -> str:
    """Digest of the setup this node holds ('' for none)."""
    return str(context.state[SETUP]["digest"]) if SETUP in context.state else ""


def backbone_state(context: Context) -> dict | None:
    """The backbone weights the server sent (None: installed here, or none)."""
    record = context.state.get(P.BACKBONE)
    return {k: v.numpy() for k, v in record.items()} if record is not None and len(record) else None
