"""What the server keeps of a site federation: the run's token, the class names, each
site's accepted tasks and the model version each site holds."""

from __future__ import annotations

import uuid

from fedrecon.learning.stats import ClassStats
from fedrecon.learning.stats_delta import Versions


class SiteBook:
    """The server's side of sites (``state.sites``), checkpointed with the run.

    ``run``: a token a site's ledger is kept under (a new run starts a new ledger, a
    resumed one finds its own). ``names``: class names by id; with a vocabulary
    (``sites.classes``) id = its position, else ids are given in the order names are first
    merged. ``accepted``: each site's task ids merged so far (every task message lists
    them, so that a site settles its offers). ``held``: the model version each site said it
    holds (its last round's update), from which its next update starts. ``versions``: which
    round last changed each class's row and the shared arrays of the merged statistics.
    """

    def __init__(self, vocabulary: list[str] | None):
        self.run = uuid.uuid4().hex[:16]
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.names: list[str] = list(vocabulary or [])
        self.accepted: dict[int, list[str]] = {}
        self.held: dict[int, int] = {}
        self.samples: dict[int, int] = {}  # samples merged a site (known in the clear only)
        self.noise = 0.0  # privacy.dp: the variance of the noise on each merged count
        self.versions = Versions()

    def ids_of(self, names: list[str]) -> list[int]:
        """The class id of each name, new names (outside a vocabulary) given the next ids."""
        index = {n: i for i, n in enumerate(self.names)}
        out = []
        for name in names:
            if name not in index:
                index[name] = len(self.names)
                self.names.append(name)
            out.append(index[name])
        return out

    def known(self, client: int, task: str) -> bool:
        return task in self.accepted.get(client, [])

    def accept(self, client: int, task: str, samples: int | None = None) -> None:
        self.accepted.setdefault(client, []).append(task)
        if samples is not None:
            self.samples[client] = self.samples.get(client, 0) + samples

    def merged(self, before: ClassStats, after: ClassStats, server_round: int) -> None:
        """The merged statistics changed in ``server_round``: mark what changed."""
        self.versions.update(before, after, server_round)

    def state(self) -> dict:
        return {"run": self.run, "names": self.names, "accepted": {str(c): t for c, t in self.accepted.items()},
                "held": {str(c): v for c, v in self.held.items()}, "versions": self.versions.state(),
                "samples": {str(c): n for c, n in self.samples.items()}, "noise": self.noise}

    def restore(self, state: dict) -> None:
        self.run = str(state["run"])
        self.names = [str(n) for n in state["names"]]
        self.accepted = {int(c): [str(t) for t in ts] for c, ts in state["accepted"].items()}
        self.held = {int(c): int(v) for c, v in state["held"].items()}
        self.versions = Versions.from_state(state["versions"])
        self.samples = {int(c): int(n) for c, n in state.get("samples", {}).items()}
        self.noise = float(state.get("noise", 0.0))

    def count_floor(self) -> float:
        """privacy.dp: the merged count a class needs to be in the model (:func:`fedrecon.dp.present`)."""
        from fedrecon.dp import PRESENCE_STDS

        return PRESENCE_STDS * self.noise ** 0.5
