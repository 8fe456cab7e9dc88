"""What fedrecon hands Flower and takes from it: the run-config defaults pyproject.toml
must write as literals, and the Flower API ``fedrecon run`` stands on."""

from __future__ import annotations

import ast
import inspect
import logging
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

from server.polling import POLL_INTERVAL
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_app_config_polls_at_the_servers_interval():
    # Flower reads [tool.flwr.app.config] as TOML literals: it cannot import the constant
    assert PYPROJECT["tool"]["flwr"]["app"]["config"]["poll_interval"] == POLL_INTERVAL


def test_the_pinned_flower_is_the_installed_one_and_excludes_the_next_major():
    # run_simulation is deprecated in 1.42: a new major may drop it, so the pin stops short of one
    (flwr,) = [r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.name == "flwr"]
    assert flwr.extras == {"simulation"}
    assert {str(s) for s in flwr.specifier} == {">=1.42", "<2"}
    assert version("flwr") in flwr.specifier


def keywords_passed_to_run_simulation() -> set[str]:
    """The keyword arguments ``fedrecon run`` (server/cli.py) gives Flower's run_simulation."""
    tree = ast.parse((REPO / "server" / "cli.py").read_text())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_simulation"]
    assert not call.args
    return {k.arg for k in call.keywords}


def test_run_simulation_takes_what_fedrecon_run_passes_and_warns_as_the_cli_filters(monkeypatch):
    """Fails the day Flower removes run_simulation or changes what it takes or says: then
    fedrecon run moves to flwr run (docs/deployment.md, "fedrecon run and Flower's run_simulation")."""
    # Prepare: the call as far as its warning; the simulation itself is left out
    from flwr.simulation import run_simulation

    from server.cli import known_harmless

    passed = keywords_passed_to_run_simulation()
    module = sys.modules[run_simulation.__module__]
    reached: dict = {}
    monkeypatch.setattr(module, "_run_simulation", lambda **kwargs: reached.update(kwargs))
    monkeypatch.setattr(module, "event", lambda *args, **kwargs: None)  # no telemetry event
    # a fedrecon run earlier in this process left the CLI's filter on Flower's logger: the record must reach us
    monkeypatch.setattr(logging.getLogger("flwr"), "filters", [])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("flwr").addHandler(handler)
    # Execute
    try:
        run_simulation(**{name: None for name in passed})
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    # Assert
    assert passed <= set(inspect.signature(run_simulation).parameters) and passed <= set(reached)
    deprecated = [r for r in records if "deprecated" in r.getMessage()]
    assert deprecated and not any(known_harmless(r) for r in deprecated)
