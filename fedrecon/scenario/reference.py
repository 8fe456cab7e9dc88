"""The scenario's reference: JSON Schema for editors and the key table of docs/scenarios.md."""

from __future__ import annotations

import json

from pydantic import BaseModel

from fedrecon.scenario.loading import models_in
from fedrecon.scenario.scenario import Scenario
from fedrecon.scenario.tasks import Disjoint, Staggered, Synchronous


def scenario_json_schema() -> dict:
    """JSON Schema of a scenario file, for editors (``fedrecon schema``).

    The ``kind`` unions also accept their shorthand string (``arrival: poisson`` is
    not valid, but ``arrival: synchronous`` is, since it needs no other key).
    """
    schema = Scenario.model_json_schema()
    for prop, models in (("split", (Disjoint,)), ("arrival", (Synchronous, Staggered))):
        field = schema["$defs"]["TasksConfig"]["properties"][prop]
        field.pop("discriminator", None)
        tags = [m.model_fields["kind"].default for m in models]
        field["oneOf"] = [*field.pop("oneOf"), {"type": "string", "enum": tags}]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(scenario_json_schema(), indent=2) + "\n"


def _default_text(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        return f"`{value.kind}`" if hasattr(value, "kind") else "(section)"
    return f"`{json.dumps(field.default)}`"


def key_rows(model: type[BaseModel] = Scenario, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, meaning) of every key, sections first-level down, kinds by name."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        members = models_in(field.annotation)
        if name == "kind":
            continue
        rows.append((key, _default_text(field), field.description or ""))
        if len(members) == 1:
            # events sit in a mapping of lists: name the client id and the item
            inner = ".<client>[]." if getattr(field.annotation, "__origin__", None) is dict else "."
            rows += key_rows(members[0], key + inner)
        for member in members if len(members) > 1 else ():
            kind = member.model_fields["kind"].default
            doc = " ".join((member.__doc__ or "").split()).replace("``", "`")
            rows.append((f"{key}: {kind}", "", doc))
            rows += key_rows(member, f"{key}.")
    return rows


def key_table() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | {d} | {m} |" if d else f"| *{k}* | | {m} |" for k, d, m in key_rows()]
    return "\n".join(lines) + "\n"
