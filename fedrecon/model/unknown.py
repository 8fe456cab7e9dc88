"""How unlike every learned class an input is: the unknown-input score, from merged statistics.

Two scores, both functions of the additive statistics the federation merged (so the
federated score equals the one a single site holding all the data computes, as the heads
do), higher meaning more likely unknown:

- ``relative_mahalanobis`` (where the clients sent the second moment: the ``lda`` head):
  the squared Mahalanobis distance to the nearest class mean under the shared
  within-class covariance, minus the one to the global mean under the global covariance
  (Ren et al., 2021, "A simple fix to Mahalanobis distance"). Both covariances are shrunk
  as the LDA head shrinks its own (``merge.shrinkage``). With the LDA head's weights
  ``w_c = P mu_c`` and biases ``b_c = -mu_c P mu_c / 2``, the nearest class's distance is
  ``x P x - 2 max_c (x w_c + b_c)``.
- ``cosine`` (every other head): one minus the largest cosine between the input's
  features and a class mean.

The threshold that turns a score into "unknown" is chosen from the clients' own training
samples by one more additive exchange (:mod:`strategies.unknown_threshold`): each client
counts its training samples' scores, each with its own class mean taken without it
(:meth:`UnknownScore.training_scores`), in fixed bins (:func:`score_counts`), the server adds
the counts and takes the bin edge at the scenario's quantile (:func:`threshold_of`). The
bins are the same everywhere and known in advance, so the summed counts, and the
threshold, are those of one site holding every training sample; no score leaves a client.
"""

from __future__ import annotations

import numpy as np

from fedrecon.learning.stats import ClassStats

UNKNOWN_FILE = "unknown.safetensors"

# The fixed bins of the threshold exchange: edges 1e-4 sinh(u) for u evenly spaced, so a
# bin is about 0.7 % of its score wide from 1e-4 to 1e8 (either sign) whatever the score's
# scale (cosine distances are below 2, Mahalanobis differences in the hundreds); scores
# beyond the last edges fall in the two open end bins.
SCORE_BINS = 8192
_SPAN = float(np.arcsinh(1e12))


def bin_edges() -> np.ndarray:
    """The ``SCORE_BINS - 1`` inner edges of the score bins, increasing."""
    return 1e-4 * np.sinh(np.linspace(-_SPAN, _SPAN, SCORE_BINS - 1))


def score_counts(scores: np.ndarray) -> np.ndarray:
    """How many of ``scores`` fall in each bin (``int64``, ``SCORE_BINS``); bin ``i`` holds
    the scores in ``(edge[i-1], edge[i]]``, so a score equal to an edge is under it."""
    index = np.searchsorted(bin_edges(), np.asarray(scores, dtype=np.float64), side="left")
    return np.bincount(index, minlength=SCORE_BINS).astype(np.int64)


def threshold_of(counts: np.ndarray, quantile: float) -> float | None:
    """The upper edge of the first bin by which ``quantile`` of the counted scores are
    reached: at least that share of the training samples score at or under it, so are
    kept. None when nothing was counted; ``inf`` when the quantile lies in the open top bin."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return None
    # integer arithmetic: the federated and the centralized sums give the same bin exactly
    need = int(np.ceil(quantile * total - 1e-9))
    i = int(np.searchsorted(np.cumsum(counts), max(need, 1), side="left"))
    edges = bin_edges()
    return float(edges[i]) if i < len(edges) else float("inf")


def _shrunk_precision(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """``((1 - a) C + a tr(C)/d I)^-1``, the LDA head's shrinkage; the identity where C has no spread."""
    d = cov.shape[0]
    scale = np.trace(cov) / d
    if scale <= 0:
        return np.eye(d)
    shrunk = (1 - shrinkage) * cov + shrinkage * scale * np.eye(d)
    values, vectors = np.linalg.eigh((shrunk + shrunk.T) / 2)
    # eigenvalues kept positive: a covariance of merged sums may be off by rounding at its small end
    values = np.maximum(values, values.max() * 1e-12)
    return (vectors / values) @ vectors.T


def unknown_parameters(stats: ClassStats, head, shrinkage: float) -> tuple[str, dict[str, np.ndarray]]:
    """The score's kind and arrays for merged ``stats`` and the head built from them."""
    means = stats.means()
    if "second_moment" in stats.shared and hasattr(head, "covariance"):
        n = stats.counts.sum()
        centre = stats.sums.sum(0) / n
        moment = stats.shared["second_moment"]
        total = (moment - n * np.outer(centre, centre)) / max(n - 1, 1.0)
        return "relative_mahalanobis", {
            "precision": _shrunk_precision(head.covariance, 0.0),  # already shrunk by the head
            "weights": head.weights, "bias": head.bias,
            "global_mean": centre, "global_precision": _shrunk_precision((total + total.T) / 2, shrinkage),
        }
    norms = np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return "cosine", {"directions": means / norms}


class UnknownScore:
    """The unknown-input score of exported arrays (see the module's docstring)."""

    def __init__(self, kind: str, arrays: dict[str, np.ndarray]):
        if kind not in ("relative_mahalanobis", "cosine"):
            raise ValueError(f"unknown-input score {kind!r}: known are relative_mahalanobis and cosine")
        self.kind, self.arrays = kind, arrays

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``(N,)``: higher, more likely an input of no learned class."""
        f = np.asarray(features, dtype=np.float64)
        a = self.arrays
        if self.kind == "cosine":
            unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            return 1.0 - (unit @ a["directions"].T).max(1)
        # quadratic forms as a matrix product and a row sum: BLAS, where einsum's three
        # operands ran one core at a time (25 s of an 80 s CLINC150 run scored with it)
        nearest = ((f @ a["precision"]) * f).sum(1) - 2 * (f @ a["weights"] + a["bias"]).max(1)
        g = f - a["global_mean"]
        return nearest - ((g @ a["global_precision"]) * g).sum(1)

    def training_scores(self, features: np.ndarray, labels: np.ndarray, classes: dict[str, np.ndarray]) -> np.ndarray:
        """The scores of training samples with each sample's own class mean taken without
        it (leave one out), so that the threshold's quantile holds for new inputs: a
        training sample pulled its class mean towards itself, and its plain score is
        lower than a new sample's (on Omniglot's 15 drawings a class, a threshold at the
        99th percentile of plain scores rejected 2.4 % of the test drawings with cosine
        and 4.2 % with relative Mahalanobis; left out, 1.2 % and 1.0 %). ``classes``:
        the merged ``ids`` and ``counts`` (and ``means``, for cosine). The shared
        covariance is kept as it is: one sample moves it by about 1/N. A class of one
        sample leaves nothing to compare with; its sample scores against the other classes."""
        f = np.asarray(features, dtype=np.float64)
        ids, counts = classes["ids"], np.asarray(classes["counts"], dtype=np.float64)
        col = np.searchsorted(ids, labels)
        if len(f) and ((col >= len(ids)).any() or (ids[np.minimum(col, len(ids) - 1)] != labels).any()):
            raise ValueError("a training sample's class is not among the merged classes")
        n = counts[col]
        rows = np.arange(len(f))
        alone = n <= 1
        if self.kind == "cosine":
            unit = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
            cos = unit @ self.arrays["directions"].T
            own = (n[:, None] * classes["means"][col] - f) / np.maximum(n - 1, 1)[:, None]
            cos[rows, col] = np.where(alone, -np.inf, (unit * own).sum(1) / np.maximum(np.linalg.norm(own, axis=1), 1e-12))
            return 1.0 - cos.max(1)
        a = self.arrays
        # squared distances to every class mean; the own class's, to the mean without the
        # sample, is (n / (n - 1))^2 times its distance to the mean with it
        dist = ((f @ a["precision"]) * f).sum(1)[:, None] - 2 * (f @ a["weights"] + a["bias"])
        dist[rows, col] = np.where(alone, np.inf, dist[rows, col] * (n / np.maximum(n - 1, 1)) ** 2)
        g = f - a["global_mean"]
        return dist.min(1) - ((g @ a["global_precision"]) * g).sum(1)
