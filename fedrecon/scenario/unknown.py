"""The scenario's ``unknown`` section: how the exported model's unknown-input threshold is chosen."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedrecon.scenario.base import Strict


class UnknownConfig(Strict):
    """The threshold above which an input's unknown-input score labels it ``unknown``
    (:mod:`fedrecon.model.unknown`), chosen from the clients' own training samples: in
    the rounds ``rounds`` names, each client counts its training samples' scores under the
    merged model in fixed bins, and the server takes the ``quantile`` of the summed
    counts. No out-of-scope data is used; the threshold equals the one a single site
    holding every training sample would choose."""

    quantile: float | None = Field(
        0.99, gt=0.0, lt=1.0,
        description="share of the training samples kept (scored at or under the threshold); null: no threshold "
                    "exchange, an export labels every input with a class unless given --unknown-threshold")
    rounds: Literal["auto", "evaluated", "last"] = Field(
        "auto", description="the rounds that choose a threshold (an export of another round has none): evaluated: "
                            "every evaluated round; last: the plan's last round (and retry rounds after it); auto: "
                            "evaluated with a frozen backbone (the clients' features are cached), last under adapters "
                            "(every training sample is embedded again each time the merged adapter changed)")

    def due(self, server_round: int, last_round: int, evaluated: bool, adapters: bool) -> bool:
        """Whether ``server_round`` chooses a threshold."""
        rounds = ("last" if adapters else "evaluated") if self.rounds == "auto" else self.rounds
        return server_round >= last_round if rounds == "last" else evaluated
