"""The threshold exchange's counts summed under secure aggregation: a second SecAgg+ sum in the round."""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ConfigRecord, Message
from flwr.common.logger import log

from fedrecon import protocol as P
from fedrecon.model.unknown import SCORE_BINS
from fedrecon.secagg.protocol import NotEnough, ServerRound
from fedrecon.secagg.ring import Ring128, decode
from strategies.rounds import Outbox, RoundWork
from strategies.secure import (KEYS, SHARES, UNMASK, ask, masked_bytes, peers_record, public_keys, revealed_shares,
                               round_threshold, sent_shares, unmask_config)
from strategies.state import ServerState

# The count sum runs after the round's statistics are unmasked, with fresh keys: its
# SecAgg+ "round" is the negative of the round's number, so that no key, mask or share
# of it can be mistaken for (or combined with) those of the statistics' sum.


def sum_id(server_round: int) -> int:
    return -server_round


@dataclass
class CountSum:
    """The secure count sum under way (``RoundWork.counts``)."""

    server: ServerRound
    relayed: dict[int, dict[int, bytes]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)


class SecureCounts:
    """Keys, shares, the masked counts, unmasking: what :class:`strategies.unknown_threshold.UnknownThreshold`
    does in place of its one exchange in the clear. The server learns the sum of the
    counts only; fewer survivors than the threshold reveal nothing (no threshold this round)."""

    exchanges = 4
    count_step = 2

    def __init__(self, threshold: float, size: int = SCORE_BINS, label: str = "threshold sum", offset: int = 0):
        # offset: a second count sum of the round (the sites' test counts) takes ids -round - offset
        self.threshold, self.size, self.label, self.offset = threshold, size, label, offset

    def sum_id(self, server_round: int) -> int:
        return sum_id(server_round) - self.offset

    def build(self, state: ServerState, work: RoundWork, step: int, clients: list[int]) -> Outbox:
        if step == 0:
            return ask(state, work, f"{self.label}: keys", clients, KEYS, {}, {"round": self.sum_id(work.number)})
        server = work.counts.server
        if step == 1:
            return ask(state, work, f"{self.label}: shares", sorted(server.keys), SHARES, {P.PEERS: peers_record(server)},
                       {"round": self.sum_id(work.number), "threshold": server.threshold})
        config = unmask_config(server)
        return ask(state, work, f"{self.label}: unmask", config["survivors"], UNMASK, {},
                   {"round": self.sum_id(work.number), **config})

    def masking(self, work: RoundWork, client: int) -> dict:
        """The records that turn a count query into a masked one for ``client``."""
        counts = work.counts
        config = {"round": self.sum_id(work.number), "survivors": list(counts.server.shared)}
        shares = {str(u): ct for u, ct in counts.relayed.get(client, {}).items()}
        return {P.SECAGG: ConfigRecord(config), P.SHARES: ConfigRecord(shares)}

    def ready(self, work: RoundWork) -> bool:
        """Whether the sum is still under way (not aborted)."""
        return work.counts is not None

    def absorb(self, state: ServerState, work: RoundWork, step: int, outbox: Outbox,
               replies: list[Message]) -> tuple[np.ndarray, list[int]] | None:
        """Fold one exchange's replies; after the unmasking, the summed counts and the
        clients summed (None before, or when the sum is not revealed)."""
        got = {outbox.to[n]: r for n, r in outbox.answers(replies).items() if not r.has_error()}
        try:
            if step == 0:
                work.counts = CountSum(ServerRound(self.sum_id(work.number), round_threshold(self.threshold, len(outbox.to))))
                for client, reply in got.items():
                    keys = public_keys(reply)
                    if keys is not None:
                        work.counts.server.keys[client] = keys
                work.counts.server.require(len(work.counts.server.keys), "advertised keys")
            elif step == 1:
                sent = {c: sent_shares(r) for c, r in got.items()}
                work.counts.relayed = work.counts.server.relay(sent)
            elif step == self.count_step:
                for client, reply in got.items():
                    data = masked_bytes(reply)
                    if len(data) == 16 * self.size:
                        work.counts.server.masked[client] = Ring128.from_bytes(data)
            else:
                reveals = {c: revealed_shares(r) for c, r in got.items()}
                survivors = sorted(work.counts.server.masked)
                total = decode(work.counts.server.unmask(reveals, self.size))
                work.counts = None
                return total, survivors
        except (NotEnough, KeyError, ValueError) as exc:
            log(WARNING, "round %d: the %s is not revealed: %s", work.number, self.label, exc)
            work.counts = None
        return None
