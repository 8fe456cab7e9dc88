"""What a node keeps between messages: the run's setup (and, under ``merge.adapters:
none``, its own adapter) in ``Context.state``, which survives a SuperNode's per-message
processes; the backbone weights the server sent in a :class:`WeightStore` (clients/setup.py),
by digest, once per process and machine rather than in every node's state, which Flower's
simulation moves with every message. What is immutable and named by a digest (the parsed scenario, a built
frozen backbone) is cached per process as well: virtual clients that share a process
may share it.
"""

from __future__ import annotations

import sys
import threading

from flwr.app import Context, Message

from clients.setup import NoSetup, Setup, node_cache, weight_store
from fedrecon import protocol as P
from fedrecon.scenario.loading import scenario_digest, scenario_from_json
from fedrecon.scenario.scenario import Scenario

SETUP = "setup"  # Context.state key
LOCAL_ADAPTER = "local_adapter"  # Context.state key: this client's own factors (merge.adapters: none)
_SCENARIOS: dict[str, Scenario] = {}  # scenario digest -> the scenario (see parsed_scenario)
_WARMING: dict[str, threading.Thread] = {}  # scenario digest -> this process's warm-up (see warm)


class WrongNode(RuntimeError):
    """A message meant for another client (the server assumed the wrong node): refused unread."""


def setup(msg: Message, context: Context) -> Setup:
    """The setup this message brings (kept in the node's context), else the kept one."""
    if P.FOR_CLIENT in msg.content:
        meant, mine = int(msg.content[P.FOR_CLIENT]["partition_id"]), int(context.node_config["partition-id"])
        if meant != mine:
            raise WrongNode(f"this message is for client {meant}, and this node is client {mine}")
    if P.SETUP in msg.content:
        record = msg.content[P.SETUP]
        if P.BACKBONE in msg.content and len(msg.content[P.BACKBONE]):
            weights = {k: v.numpy() for k, v in msg.content[P.BACKBONE].items()}
            weight_store(node_cache(context.node_config)).put(str(record["backbone_digest"]), weights)
        context.state[SETUP] = record
    for warming in list(_WARMING.values()):  # a task must not decode what a warm-up is decoding
        warming.join()
    if SETUP not in context.state:
        raise NoSetup("this node holds no setup for the run (restarted?); the server sends it with the next task")
    return setup_from(setup_record(context), context.node_config)


def setup_record(context: Context) -> dict:
    """The setup this node holds as plain values (digest, scenario JSON, backbone digest, weights)."""
    record = context.state[SETUP]
    return {k: str(record[k]) for k in ("digest", "scenario", "backbone_digest", "weights")}


def held_weights(node_config) -> str:
    """Digests of the weights this node's process or machine holds, comma-separated (the identify answer)."""
    return ",".join(weight_store(node_cache(node_config)).held())


def parsed_scenario(scenario_json: str) -> Scenario:
    """The scenario of this JSON, parsed once a process: keyed by the scenario's own digest,
    so that the identify warm-up's parse serves the tasks of every setup that holds it."""
    key = scenario_digest(scenario_json)
    if key not in _SCENARIOS:
        _SCENARIOS[key] = scenario_from_json(scenario_json)
    return _SCENARIOS[key]


def setup_from(record: dict, node_config) -> Setup:
    """The Setup of a setup record on the node of ``node_config`` (also the node's worker's way in)."""
    scenario = parsed_scenario(record["scenario"])
    # a real deployment keeps its data where it likes; the node config says where
    root = node_config.get("data-root")
    if root:
        scenario = scenario.model_copy(update={"data": scenario.data.model_copy(update={"root": str(root)})})
    return Setup(scenario, record["backbone_digest"], int(node_config["partition-id"]), node_cache(node_config),
                 record["weights"] == "sent")


def held_digest(context: Context) -> str:
    """Digest of the setup this node holds ('' for none)."""
    return str(context.state[SETUP]["digest"]) if SETUP in context.state else ""


def prepare_data(scenario_json: str, node_config) -> None:
    """Import the learning code and decode the scenario's data (into the node's cache, and
    this process), so that the node's first task finds them ready. A failure is the first
    task's to report."""
    from clients import learner  # noqa: F401 (torch and the learning code: seconds, once a process)
    from fedrecon.data.registry import load_dataset

    try:
        record = {"scenario": scenario_json, "backbone_digest": "", "weights": "installed"}
        setup = setup_from(record, node_config)
        load_dataset(setup.scenario.data, setup.cache).inputs
    except Exception as e:  # noqa: BLE001 (logged; the task that needs the data says what is wrong)
        print(f"fedrecon: could not prepare the scenario's data: {e}", file=sys.stderr, flush=True)


def warm(scenario_json: str, node_config) -> None:
    """:func:`prepare_data` in a thread of this process, once a scenario, while the process
    answers the identify queries of a simulation's other virtual clients (they cost it
    little; the first task of each worker would otherwise wait seconds for it)."""
    key = scenario_digest(scenario_json)
    if key not in _WARMING:
        _WARMING[key] = threading.Thread(target=prepare_data, args=(scenario_json, dict(node_config)),
                                         name="fedrecon-warm", daemon=True)
        _WARMING[key].start()
