"""The run's privacy budget (``privacy.dp``): the noise clients add, and the epsilon spent."""

from __future__ import annotations

import math

from fedrecon import dp
from fedrecon.learning.heads import head_spec
from fedrecon.plan.records import Plan
from fedrecon.scenario.scenario import Scenario


class PrivacyBudget:
    """Calibrated once for the plan's rounds with arrivals; every round whose statistics go
    out is one release. A round that would spend more than the budget is not run."""

    def __init__(self, scenario: Scenario, plan: Plan):
        self.config = scenario.privacy.dp
        # sites: every round is a release (every site sends its noised statistics, new data or not)
        self.planned = plan.rounds if scenario.sites is not None else len({a.round for a in plan.arrivals})
        self.multiplier = dp.calibrate(self.config.epsilon, self.config.delta, self.planned)
        # under the ridge head each block's noise is scaled by its own bound too (fedrecon.dp.block_scales)
        self.sensitivity = dp.release_sensitivity(head_spec(scenario.merge, scenario.seed), self.config.clip)
        self.releases = 0

    def allows_another(self) -> bool:
        return dp.epsilon_spent(self.multiplier, self.releases + 1, self.config.delta) <= self.config.epsilon * (1 + 1e-9)

    def std(self, sharing: int = 1) -> float:
        """Noise a client adds to each released value when ``sharing`` clients' noise adds up."""
        return self.multiplier * self.sensitivity / math.sqrt(sharing)

    def release(self) -> None:
        self.releases += 1

    def spent(self) -> float:
        return dp.epsilon_spent(self.multiplier, self.releases, self.config.delta)

    def row(self) -> dict:
        """A round's line of metrics.jsonl: the epsilon spent so far and the noise's standard
        deviation on each released value (under secure aggregation, at least that on each sum)."""
        return {"epsilon": round(self.spent(), 4), "noise_std": round(self.std(), 6)}

    def summary(self) -> dict:
        return {"privacy_epsilon": round(self.spent(), 6), "privacy_epsilon_target": self.config.epsilon,
                "privacy_delta": self.config.delta, "noise_multiplier": round(self.multiplier, 6),
                "noise_std": round(self.std(), 6), "releases": self.releases}
