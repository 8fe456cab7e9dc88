"""The round's layout: every client of a round sends one vector of one shape.

The server announces it (the class slots any of the round's clients learns, the head's
shared arrays, the adapter factors a merging policy sums); a client writes its statistics
into its own slots and zeros elsewhere, so that the vectors add up to the round's
statistics, in the layout's order: counts (K), sums (K x d), random-feature sums (K x m),
the second moment's and the Gram's upper triangles, then for adapters the sample weight
and the weight times each factor (their sums give the weighted means ``fedavg`` and
``ffa`` merge to).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from fedrecon.learning.stats import ClassStats, pack_symmetric


def _triangle(n: int) -> int:
    return n * (n + 1) // 2


@dataclass(frozen=True)
class Layout:
    classes: tuple[int, ...]
    dim: int
    second_moment: bool = False
    random_features: int = 0
    factors: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def parts(self) -> list[tuple[str, int]]:
        """(name, length) of each part, in order."""
        k, d, m = len(self.classes), self.dim, self.random_features
        out = [("counts", k), ("sums", k * d)]
        if m:
            out.append(("rf_sums", k * m))
        if self.second_moment:
            out.append(("second_moment", _triangle(d)))
        if m:
            out.append(("gram", _triangle(m)))
        if self.factors:
            out.append(("weight", 1))
            out += [(f"factor:{key}", int(np.prod(shape))) for key, shape in self.factors]
        return out

    def size(self) -> int:
        return sum(n for _, n in self.parts())

    def vector(self, stats: ClassStats, factors: dict | None = None, weight: float = 0.0) -> np.ndarray:
        """A client's statistics (and weighted adapter factors) in this layout, zeros elsewhere."""
        slot = {c: i for i, c in enumerate(self.classes)}
        if not set(stats.ids.tolist()) <= set(slot):
            raise ValueError(f"classes {sorted(set(stats.ids.tolist()) - set(slot))} have no slot in the round's layout")
        rows = np.array([slot[int(c)] for c in stats.ids], dtype=np.int64)
        k = len(self.classes)
        values: dict[str, np.ndarray] = {}
        counts = np.zeros(k)
        counts[rows] = stats.counts
        values["counts"] = counts
        for name, per_class in stats.per_class().items():
            full = np.zeros((k, per_class.shape[1]))
            full[rows] = per_class
            values[name] = full.ravel()
        for name, matrix in stats.shared.items():
            values[name] = pack_symmetric(matrix)
        if self.factors:
            trained = bool(factors)
            values["weight"] = np.array([weight if trained else 0.0])
            for key, shape in self.factors:
                values[f"factor:{key}"] = (weight * np.asarray(factors[key], np.float64)).ravel() if trained \
                    else np.zeros(int(np.prod(shape)))
        out = []
        for name, n in self.parts():
            part = values.get(name, np.zeros(n))
            if len(part) != n:
                raise ValueError(f"{name}: {len(part)} values where the layout has {n}")
            out.append(part)
        return np.concatenate(out) if out else np.zeros(0)

    def read(self, vector: np.ndarray, classes=None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
        """The summed vector as reply arrays of ``classes`` (default: those whose summed count
        is positive; under differential privacy counts are noisy, so the caller names them),
        the factor sums (weighted) and the weight total."""
        if len(vector) != self.size():
            raise ValueError(f"{len(vector)} values where the layout has {self.size()}")
        parts, start = {}, 0
        for name, n in self.parts():
            parts[name] = vector[start : start + n]
            start += n
        k = len(self.classes)
        keep = parts["counts"] > 0 if classes is None else np.isin(np.array(self.classes, dtype=np.int64), list(classes))
        arrays = {"ids": np.array(self.classes, dtype=np.int64)[keep], "counts": parts["counts"][keep],
                  "sums": parts["sums"].reshape(k, self.dim)[keep]}
        if self.random_features:
            arrays["rf_sums"] = parts["rf_sums"].reshape(k, self.random_features)[keep]
            arrays["gram"] = parts["gram"]
        if self.second_moment:
            arrays["second_moment"] = parts["second_moment"]
        factors = {key: parts[f"factor:{key}"].reshape(shape) for key, shape in self.factors}
        return arrays, factors, float(parts["weight"][0]) if self.factors else 0.0

    def to_json(self) -> str:
        """The layout as the round's messages carry it."""
        return json.dumps({"classes": list(self.classes), "dim": self.dim, "second_moment": self.second_moment,
                           "random_features": self.random_features,
                           "factors": [[key, list(shape)] for key, shape in self.factors]})

    @classmethod
    def from_json(cls, text: str) -> "Layout":
        d = json.loads(text)
        return cls(tuple(int(c) for c in d["classes"]), int(d["dim"]), bool(d["second_moment"]), int(d["random_features"]),
                   tuple((str(k), tuple(int(n) for n in s)) for k, s in d["factors"]))
