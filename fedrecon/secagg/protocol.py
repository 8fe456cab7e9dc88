"""One round's secure sum, SecAgg+-style (Bell et al., 2020), client and server sides.

1. **Keys.** Each client of the round makes two X25519 key pairs, ``c`` (to encrypt the
   shares it sends) and ``s`` (to agree on masks), and the server relays the public keys.
2. **Shares.** Each client draws a self-mask seed ``b`` and Shamir-shares ``b`` and its
   ``s`` private key t-of-n among the round's clients; each share travels to its holder
   encrypted (ChaCha20-Poly1305, keyed by HKDF of the ``c`` Diffie-Hellman secret), so the
   server relays them unread.
3. **Masked input.** A client sends ``x + PRG(b) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)``
   in the integers mod 2^128 (``ring``), where ``s_uv`` is HKDF of the ``s`` Diffie-Hellman
   secret of u and v: pairwise masks cancel in the sum, self masks do not.
4. **Unmask.** Each surviving client reveals its shares of the survivors' ``b`` and of the
   dropped clients' ``s`` keys, never both for one client. With t of them the server removes
   the survivors' self masks and the dropped clients' pairwise masks: it learns the sum of
   the survivors' inputs and nothing else; with fewer it learns nothing.

Threat model: an honest-but-curious server and fewer than t colluding clients
(docs/privacy.md). The masks are a ChaCha20 keystream keyed by the full 32-byte secret.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrecon.secagg import shamir
from fedrecon.secagg.ring import Ring128, encode, stream


class NotEnough(RuntimeError):
    """Fewer clients than the threshold: the round's sum cannot be (and is not) revealed."""


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _kdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def pair_key(private: bytes, public: bytes, round: int, u: int, v: int) -> bytes:
    """The mask key of clients u and v in ``round``: the same from either side."""
    secret = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(public))
    low, high = sorted((u, v))
    return _kdf(secret, f"fedrecon secagg mask {round} {low} {high}".encode())


def pair_mask(private: bytes, public: bytes, round: int, u: int, v: int, n: int) -> Ring128:
    """What u adds for its pair with v (v subtracts it)."""
    m = stream(pair_key(private, public, round, u, v), n)
    return m if u < v else -m


@dataclass
class ClientRound:
    """A client's part in one round; its secrets stay with the client (``state`` keeps them
    in the node's context between the round's messages)."""

    me: int
    round: int
    c_sk: bytes
    s_sk: bytes
    b: bytes = b""
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (c public, s public)
    held: dict[int, tuple[int, int]] = field(default_factory=dict)  # sender -> (share of its b, share of its s key)

    @classmethod
    def start(cls, me: int, round: int) -> "ClientRound":
        return cls(me, round, _raw_private(X25519PrivateKey.generate()), _raw_private(X25519PrivateKey.generate()))

    def public(self) -> tuple[bytes, bytes]:
        return (_raw_public(X25519PrivateKey.from_private_bytes(self.c_sk)),
                _raw_public(X25519PrivateKey.from_private_bytes(self.s_sk)))

    def _box(self, other: int) -> ChaCha20Poly1305:
        secret = X25519PrivateKey.from_private_bytes(self.c_sk).exchange(X25519PublicKey.from_public_bytes(self.peers[other][0]))
        return ChaCha20Poly1305(_kdf(secret, f"fedrecon secagg shares {self.round}".encode()))

    def share(self, peers: dict[int, tuple[bytes, bytes]], threshold: int) -> dict[int, bytes]:
        """Draw ``b``; share it and the ``s`` key among ``peers`` (every client of the round,
        this one too); each share encrypted for its holder."""
        if self.me not in peers or peers[self.me] != self.public():
            raise ValueError("the round's key list does not hold this client's keys")
        self.peers, self.b = dict(peers), os.urandom(32)
        holders = sorted(peers)
        b_shares, s_shares = shamir.split(self.b, threshold, holders), shamir.split(self.s_sk, threshold, holders)
        out = {}
        for v in holders:
            if v == self.me:
                self.held[v] = (b_shares[v], s_shares[v])
                continue
            nonce = os.urandom(12)
            plain = shamir.share_bytes(b_shares[v]) + shamir.share_bytes(s_shares[v])
            out[v] = nonce + self._box(v).encrypt(nonce, plain, f"{self.round} {self.me} {v}".encode())
        return out

    def receive(self, ciphertexts: dict[int, bytes]) -> None:
        """Keep the shares the other clients sent this one (refused if tampered with)."""
        for u, data in ciphertexts.items():
            plain = self._box(u).decrypt(data[:12], data[12:], f"{self.round} {u} {self.me}".encode())
            self.held[u] = (shamir.share_from_bytes(plain[:66]), shamir.share_from_bytes(plain[66:]))

    def mask(self, values, survivors: list[int]) -> Ring128:
        """The client's values, self-masked and pairwise-masked with every other client that
        shared this round (``survivors``)."""
        x = encode(values)
        masked = x + stream(self.b, len(x))
        for v in survivors:
            if v != self.me:
                masked = masked + pair_mask(self.s_sk, self.peers[v][1], self.round, self.me, v, len(x))
        return masked

    def reveal(self, survivors: list[int], dropped: list[int]) -> dict[str, dict[int, int]]:
        """Shares of the survivors' ``b`` and of the dropped clients' ``s`` keys (never both for one client)."""
        if set(survivors) & set(dropped):
            raise ValueError("a client cannot be both a survivor and dropped")
        missing = [v for v in (*survivors, *dropped) if v not in self.held]
        if missing:
            raise ValueError(f"no shares held for clients {missing}")
        return {"b": {v: self.held[v][0] for v in survivors}, "s": {v: self.held[v][1] for v in dropped}}

    def state(self) -> str:
        return json.dumps({"me": self.me, "round": self.round, "c_sk": self.c_sk.hex(), "s_sk": self.s_sk.hex(),
                           "b": self.b.hex(), "peers": {str(k): [c.hex(), s.hex()] for k, (c, s) in self.peers.items()},
                           "held": {str(k): [str(b), str(s)] for k, (b, s) in self.held.items()}})

    @classmethod
    def from_state(cls, text: str) -> "ClientRound":
        d = json.loads(text)
        return cls(d["me"], d["round"], bytes.fromhex(d["c_sk"]), bytes.fromhex(d["s_sk"]), bytes.fromhex(d["b"]),
                   {int(k): (bytes.fromhex(c), bytes.fromhex(s)) for k, (c, s) in d["peers"].items()},
                   {int(k): (int(b), int(s)) for k, (b, s) in d["held"].items()})


class ServerRound:
    """The server's side of one round: it relays keys and shares, adds masked inputs, and
    unmasks their sum from the survivors' shares."""

    def __init__(self, round: int, threshold: int):
        self.round, self.threshold = round, threshold
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.shared: list[int] = []  # clients whose shares went out (U2)
        self.masked: dict[int, Ring128] = {}  # survivors' masked inputs (U3)

    def require(self, count: int, stage: str) -> None:
        if count < self.threshold:
            raise NotEnough(f"{count} clients {stage}, fewer than the threshold {self.threshold}: nothing is revealed")

    def relay(self, sent: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Each holder's ciphertexts, by sender, from what every sender sent (only senders that
        shared with every client of the key list count)."""
        complete = {u: out for u, out in sent.items() if set(out) == set(self.keys) - {u}}
        self.require(len(complete), "shared their keys")
        self.shared = sorted(complete)
        return {v: {u: out[v] for u, out in complete.items() if u != v} for v in self.shared}

    def unmask(self, reveals: dict[int, dict[str, dict[int, int]]], n: int) -> Ring128:
        """The sum of the survivors' inputs, from the shares at least ``threshold`` of them revealed."""
        survivors = sorted(self.masked)
        dropped = [v for v in self.shared if v not in self.masked]
        self.require(len(survivors), "sent their masked input")
        holders = sorted(w for w, r in reveals.items()
                         if set(r.get("b", {})) == set(survivors) and set(r.get("s", {})) == set(dropped))
        self.require(len(holders), "revealed their shares")
        holders = holders[: max(self.threshold, 1)]
        weights = shamir.lagrange_at_zero(holders)
        total = Ring128.zeros(n)
        for u in survivors:
            total = total + self.masked[u]
        for v in survivors:
            b = shamir.combine({w: reveals[w]["b"][v] for w in holders}, weights)
            total = total - stream(b, n)
        for v in dropped:
            s_sk = shamir.combine({w: reveals[w]["s"][v] for w in holders}, weights)
            for w in survivors:  # w added pair_mask(w, v); remove it
                total = total - pair_mask(s_sk, self.keys[w][1], self.round, w, v, n)
        return total
