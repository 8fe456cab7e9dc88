"""Before a run under ``privacy.dp``: the classes whose statistics the clients' noise drowns.

Each client clips its samples' features to L2 norm ``clip`` and adds Gaussian noise of
standard deviation ``sigma`` (the budget's calibration, :mod:`strategies.budget`) to every
count and sum coordinate it releases. A class of ``n`` training samples released by ``k``
arrivals ends with noise of standard deviation ``sigma sqrt(k)`` on its count and on each
of the ``d`` coordinates of its sum, so its mean carries noise of L2 norm about
``sigma sqrt(k d) / n``. (Under secure aggregation each client adds ``sigma^2 / t`` of the
variance, ``t`` the round's threshold, to every class slot of the round.) The ridge head reads the
classes' random-feature sums instead: noise ``b`` times that on each of their ``M``
coordinates, against a bound of ``b`` (:func:`fedrecon.dp.block_scales`).

A class mean is at most ``clip`` long, and the means of one dataset's classes sit closer
together than that: a class whose mean's noise is half the clip or more is *drowned*.
The line is set from docs/benchmarks.md's DP table: CLINC150 (100 sentences an intent,
MiniLM, clip 1) keeps 0.914 of 0.920 at 0.32 of the clip and loses a quarter of its
accuracy at 1.0; the Omniglot protocol (15 drawings, conv4, clip 12) falls from 0.894 to
0.079 at 0.67. It is a warning, not a refusal: the noise is the price of the budget asked for.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from fedrecon import dp
from fedrecon.plan.records import Plan
from fedrecon.scenario.scenario import Scenario
from strategies.budget import PrivacyBudget
from strategies.secure import round_threshold

# the share of the clip a class mean's noise may reach before the class counts as drowned
DROWNED = 0.5
# classes named in a warning (the rest are counted)
SHOWN = 12


def class_noise(scenario: Scenario, plan: Plan, budget: PrivacyBudget) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plan's classes, their training samples, and the noise's standard deviation on
    each of their merged count and sum coordinates (the clients' noise, added up)."""
    variance: dict[int, float] = defaultdict(float)
    samples: dict[int, int] = defaultdict(int)
    secure = scenario.privacy.secure_aggregation
    for server_round in range(1, plan.rounds + 1):
        arrivals = plan.arrivals_at(server_round)
        clients = len({a.client for a in arrivals})
        # the std a client is told to add (strategies/tasks.py, strategies/secure.py); under secure
        # aggregation every client of the round adds it to every class slot of the round
        std = budget.std(round_threshold(scenario.privacy.threshold, clients) if secure else 1)
        for arrival in arrivals:
            for c, group in zip(arrival.classes, arrival.samples):
                variance[c] += std**2 if not secure else 0.0
                samples[c] += len(group)
        if secure:
            for c in {c for a in arrivals for c in a.classes}:
                variance[c] += clients * std**2
    ids = np.array(sorted(variance), dtype=np.int64)
    return ids, np.array([samples[c] for c in ids], float), np.sqrt([variance[c] for c in ids])


def _up(x: float) -> float:
    """``x`` rounded up to two significant digits (a value to write in a scenario)."""
    if x <= 0 or not math.isfinite(x):
        return x
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / scale - 1e-9) * scale


def drowning_warnings(scenario: Scenario, plan: Plan, dim: int) -> list[str]:
    """One warning naming the classes the noise drowns, with the epsilon (and the samples
    a class) that would keep every class under the line; none when no class drowns."""
    config = scenario.privacy.dp
    if config is None or not plan.arrivals:
        return []
    budget = PrivacyBudget(scenario, plan)
    ids, samples, std = class_noise(scenario, plan, budget)
    if scenario.merge.head == "ridge":
        # the ridge head reads the classes' random-feature sums: noised by b a unit, at most b long a sample
        size, block = scenario.merge.random_features, "random-feature sum"
        bound = dp.feature_bound(scenario.seed, dim, size, config.clip)
        std = std * bound
    else:
        size, block, bound = dim, "sum", config.clip
    on_mean = std * math.sqrt(size) / samples
    line = DROWNED * bound
    drowned = on_mean >= line
    if not drowned.any():
        return []
    worst = int(np.argmax(on_mean))
    # noise scales with the multiplier: the largest one that keeps every class under the line
    multiplier = budget.multiplier * float(np.min(line / on_mean))
    epsilon = _up(dp.epsilon_spent(multiplier, budget.planned, config.delta))
    shots = math.ceil(float(np.max(std)) * math.sqrt(size) / line)
    names = ", ".join(map(str, ids[drowned][:SHOWN])) + (" ..." if drowned.sum() > SHOWN else "")
    return [f"privacy.dp: the noise drowns {int(drowned.sum())} of {len(ids)} classes ({names}): at epsilon "
            f"{config.epsilon:g} a class's mean carries noise of norm up to {on_mean[worst]:.2g} (class {ids[worst]}: "
            f"{samples[worst]:.0f} training samples, noise std {std[worst]:.2g} on each of its {block}'s {size} "
            f"coordinates) against {_bound_words(scenario, bound)}, the longest a mean can be (drowned: half of it or "
            f"more); privacy.dp.epsilon {epsilon:g} would keep every class under that, or {shots} training samples "
            f"a class at epsilon {config.epsilon:g}"]


def _bound_words(scenario: Scenario, bound: float) -> str:
    if scenario.merge.head == "ridge":
        return f"{bound:.3g} (the clip times the random projection's norm)"
    return f"a clip of {bound:g}"

