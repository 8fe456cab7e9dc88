"""Scenario files: YAML into one frozen, typed object, with errors that point at the file.

The :class:`Scenario` model is the only description of a run: the server reads it, and
it travels to every client as its own JSON (:func:`scenario_json`), so both sides read
the same typed sections. Nothing here imports torch or Flower.
"""

from fedrecon.scenario.errors import ScenarioError, SourceMap, source_of
from fedrecon.scenario.loading import load_scenario, parse_scenario, scenario_from_json, scenario_json
from fedrecon.scenario.reference import key_table, schema_text
from fedrecon.scenario.scenario import Scenario

__all__ = ["Scenario", "ScenarioError", "SourceMap", "key_table", "load_scenario", "parse_scenario",
           "scenario_from_json", "scenario_json", "schema_text", "source_of"]
