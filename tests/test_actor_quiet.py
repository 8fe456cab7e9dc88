"""The Ray actors' own end-of-run warning is dropped where it is logged (the actor's process,
which loads the ClientApp), so no coloured line follows a run's final table; every other
line of Flower's still shows."""

from __future__ import annotations

import inspect
import logging
from logging import WARNING

from flwr.common.logger import FLOWER_LOGGER
from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor
from flwr.supercore import log

from clients.client_app import ACTOR_END, not_actor_end


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_loading_the_client_app_drops_only_the_actors_end():
    kept = Kept()
    FLOWER_LOGGER.addHandler(kept)
    try:
        log(WARNING, "Manually terminating %s", "ClientAppActor")
        log(WARNING, "a warning that matters")
    finally:
        FLOWER_LOGGER.removeHandler(kept)
    assert not_actor_end in FLOWER_LOGGER.filters
    assert kept.lines == ["a warning that matters"]


def test_flower_still_words_the_actors_end_as_the_filter_expects():
    # a tripwire: if Flower rewords it, the line comes back after the table
    assert f'"{ACTOR_END}%s"' in inspect.getsource(VirtualClientEngineActor.terminate)
