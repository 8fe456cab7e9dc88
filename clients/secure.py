"""A client's part in secure aggregation: its round secrets kept in the node's context."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from fedrecon import dp
from fedrecon import protocol as P
from fedrecon.learning.stats import ClassStats
from fedrecon.secagg.layout import Layout
from fedrecon.secagg.protocol import ClientRound

STATE = "secagg"  # Context.state key: this round's ClientRound


def _load(context: Context, server_round: int) -> ClientRound:
    if STATE not in context.state:
        raise RuntimeError("no secure aggregation under way on this node (restarted?)")
    state = ClientRound.from_state(str(context.state[STATE]["state"]))
    if state.round != server_round:
        raise RuntimeError(f"this node's secure aggregation is of round {state.round}, not {server_round}")
    return state


def _save(context: Context, state: ClientRound) -> None:
    context.state[STATE] = ConfigRecord({"state": state.state()})


def keys(msg: Message, context: Context) -> ConfigRecord:
    """Fresh key pairs for the round; their public halves."""
    state = ClientRound.start(int(context.node_config["partition-id"]), int(msg.content[P.SECAGG]["round"]))
    _save(context, state)
    c, s = state.public()
    return ConfigRecord({"c": c, "s": s})


def shares(msg: Message, context: Context) -> ConfigRecord:
    """This client's shares of its secrets, each encrypted for its holder."""
    config = msg.content[P.SECAGG]
    state = _load(context, int(config["round"]))
    peers = {int(k): (bytes(v)[:32], bytes(v)[32:]) for k, v in msg.content[P.PEERS].items()}
    out = state.share(peers, int(config["threshold"]))
    _save(context, state)
    return ConfigRecord({str(v): ct for v, ct in out.items()})


def masked(msg: Message, context: Context, stats: ClassStats, factors: dict, weight: float,
           noise: tuple[float, dict] | None = None) -> np.ndarray:
    """The task's statistics (and weighted adapter factors) in the round's layout, masked,
    as bytes; the shares the others sent this client are kept for the unmasking. ``noise``
    (privacy.dp: the std and the blocks' scales its own statistics were noised with) goes
    on the other classes' slots too (fedrecon.dp.noise_other_slots)."""
    layout = Layout.from_json(str(msg.content[P.SECAGG]["layout"]))
    vector = layout.vector(stats, factors, weight)
    if noise is not None:
        vector = vector + dp.noise_other_slots(layout, stats.ids, *noise)
    return masked_values(msg, context, vector)


def masked_values(msg: Message, context: Context, values: np.ndarray) -> np.ndarray:
    """``values`` masked for the sum the message is part of (its SECAGG round and
    survivors), as bytes; the shares the others sent this client are kept for the unmasking."""
    config = msg.content[P.SECAGG]
    state = _load(context, int(config["round"]))
    state.receive({int(k): bytes(v) for k, v in msg.content[P.SHARES].items()})
    out = state.mask(values, [int(c) for c in config["survivors"]])
    _save(context, state)
    return np.frombuffer(out.to_bytes(), dtype=np.uint8)


def unmask(msg: Message, context: Context) -> ConfigRecord:
    """Shares of the survivors' self-mask seeds and of the dropped clients' mask keys; the round's secrets are then dropped."""
    config = msg.content[P.SECAGG]
    state = _load(context, int(config["round"]))
    revealed = state.reveal([int(c) for c in config["survivors"]], [int(c) for c in config["dropped"]])
    del context.state[STATE]
    return ConfigRecord({f"{part}:{v}": y.to_bytes(66, "big") for part, held in revealed.items() for v, y in held.items()})
