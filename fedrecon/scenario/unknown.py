"""The scenario's ``unknown`` section: how the exported model's unknown-input threshold is chosen."""

from __future__ import annotations

from pydantic import Field

from fedrecon.scenario.base import Strict


class UnknownConfig(Strict):
    """The threshold above which an input's unknown-input score labels it ``unknown``
    (:mod:`fedrecon.model.unknown`), chosen from the clients' own training samples: in
    every evaluated round, each client counts its training samples' scores under the
    merged model in fixed bins, and the server takes the ``quantile`` of the summed
    counts. No out-of-scope data is used; the threshold equals the one a single site
    holding every training sample would choose."""

    quantile: float | None = Field(
        0.99, gt=0.0, lt=1.0,
        description="share of the training samples kept (scored at or under the threshold); null: no threshold "
                    "exchange, an export labels every input with a class unless given --unknown-threshold")
