"""What fedrecon hands Flower and takes from it: the run-config defaults pyproject.toml
must write as literals, and the Flower API ``fedrecon run`` stands on."""

from __future__ import annotations

import tomllib

from server.polling import POLL_INTERVAL
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_app_config_polls_at_the_servers_interval():
    # Flower reads [tool.flwr.app.config] as TOML literals: it cannot import the constant
    assert PYPROJECT["tool"]["flwr"]["app"]["config"]["poll_interval"] == POLL_INTERVAL
