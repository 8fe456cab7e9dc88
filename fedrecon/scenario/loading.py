"""Reading a scenario: YAML with key positions, ``--set`` overrides, pydantic errors
turned into ``file:line:col`` lines, paths made absolute, and the JSON it travels as."""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedrecon.scenario.base import kind_shorthand
from fedrecon.scenario.checks import cross_checks
from fedrecon.scenario.errors import ScenarioError, SourceMap, source_of
from fedrecon.scenario.scenario import Scenario
from fedrecon.scenario.sections import default_data_root
from fedrecon.scenario.tasks import ArrivalProcess, Split
from fedrecon.scenario.yaml_guard import YamlRefused, compose, read_text

# Keys that moved, and where to: refused with their new place, as a misspelt key is.
MOVED = {("simulation", "timeout"): "faults.reply_timeout"}

# Keys whose relative paths are taken from the scenario file's folder.
PATH_KEYS = {"data": ("root", "path", "test_path"), "model": ("checkpoint", "embedding_cache"),
             "tracking": ("mlflow", "tensorboard")}

def _positions(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            # Integer keys (client ids) are ints in the loaded data and in pydantic's locations.
            name = yaml.safe_load(key.value) if key.tag == "tag:yaml.org,2002:int" else key.value
            here = path + (name,)
            out[here] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _positions(value, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _positions(item, path + (i,), out)
    return out


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes inside an annotation (plain, Optional, a container or a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()):
        found += models_in(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and getattr(annotation, "__metadata__", None):
        found += models_in(origin)
    return found


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc`` (to list the allowed keys)."""
    model: type[BaseModel] = Scenario
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        if isinstance(part, int):  # a list index or a client id: same model
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        members = models_in(field.annotation)
        if not members:
            return None
        if len(members) > 1 and parts:
            tag = parts.pop(0)
            members = [m for m in members if m.model_fields["kind"].default == tag] or members
        model = members[0]
    return model


def _kinds_at(loc: tuple) -> str:
    union = {"split": Split, "arrival": ArrivalProcess}.get(str(loc[-1]) if loc else "")
    kinds = dict.fromkeys(m.model_fields["kind"].default for m in models_in(union)) if union else {}
    return ", ".join(repr(k) for k in kinds) or "see the docs"


def _hint(loc: tuple) -> tuple[str | None, list[str]]:
    owner = _model_at(loc)
    allowed = sorted(owner.model_fields) if owner else []
    hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    return (hint[0] if hint else None), allowed


def _describe(err: dict, source: SourceMap) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden" and loc in MOVED:
        return source.error(loc, f"moved; write it as {MOVED[loc]}")
    if kind == "extra_forbidden":
        hint, allowed = _hint(loc)
        msg = "unknown key"
        if hint:
            msg += f"; did you mean '{hint}'?"
        if allowed:
            msg += f"{'' if hint else ';'} allowed: {', '.join(allowed)}"
        return source.error(loc, msg)
    if kind == "missing":
        return source.error(loc, "required key is missing")
    if kind == "literal_error":
        return source.error(loc, f"got {err.get('input')!r}; allowed: {err['ctx']['expected']}")
    if kind == "union_tag_invalid":
        return source.error(loc, f"kind {err['ctx']['tag']!r} is not known; allowed: {err['ctx']['expected_tags']}")
    if kind == "union_tag_not_found":
        return source.error(loc, f"needs a kind; allowed: {_kinds_at(loc)}")
    message = err["msg"].removeprefix("Value error, ")
    got = repr(err.get("input"))
    # A whole section as "got" hides the message; short values help.
    return source.error(loc, f"{message} (got {got})" if len(got) <= 60 else message)


def _typos_once(errors: list[dict]) -> list[dict]:
    """A misspelt required key is one mistake, not "unknown key" plus "missing key":
    drop the "missing" error the "did you mean" of a sibling unknown key explains."""
    meant = set()
    for err in errors:
        if err["type"] == "extra_forbidden":
            loc = tuple(err["loc"])
            hint, _ = _hint(loc)
            if hint:
                meant.add(loc[:-1] + (hint,))
    return [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in meant)]


# An override that removes a key: the command line's ``--unset key.path`` arrives as "-key.path".
UNSET = "-"


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> tuple[dict, dict[tuple, str]]:
    """Apply ``key.path=value`` overrides to the loaded YAML; the value is read as YAML.
    ``-key.path`` (:data:`UNSET`) removes a key the file sets, so that a key which only
    fits the file's settings can go when an override changes them.

    Returns the new mapping and, for each path written, the override's text (errors
    about that key name the override instead of a line of the file).
    """
    problems, labels = [], {}
    for text in overrides:
        if text.startswith(UNSET):
            problems += _unset(raw, text[len(UNSET):], labels)
            continue
        key, sep, value_text = text.partition("=")
        parts = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
        label = f"--set {text}"
        if not sep or not key.strip() or "" in parts:
            problems.append(f"{label}: expected key.path=value, e.g. --set tasks.num_classes=50")
            continue
        try:
            _, value = compose(value_text)
        except YamlRefused as exc:
            problems.append(f"{label}: value refused: {exc}")
            continue
        except yaml.YAMLError as exc:
            problems.append(f"{label}: value is not valid YAML: {getattr(exc, 'problem', exc)}")
            continue
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node[part] if _has(node, part) else None
            if isinstance(child, str) and parts[depth + 1] != "kind":
                child = kind_shorthand(child)
            if not isinstance(child, (dict, list)):
                child = {}
            node[part] = child
            node = child
        last = parts[-1]
        if isinstance(node, list) and not (isinstance(last, int) and last < len(node)):
            problems.append(f"{label}: {key}: no item {last} in a list of {len(node)}")
            continue
        node[last] = value
        labels[parts] = label
    if problems:
        raise ScenarioError(problems)
    return raw, labels


def _unset(raw: dict, key: str, labels: dict[tuple, str]) -> list[str]:
    """Remove a key the file sets (``--unset key.path``): the problems, if any."""
    parts = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    label = f"--unset {key}"
    if not key.strip() or "" in parts:
        return [f"{label}: expected key.path, e.g. --unset merge.metric"]
    node = raw
    for part in parts[:-1]:
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    if not isinstance(node, dict) or parts[-1] not in node:
        return [f"{label}: the scenario does not set {key}; nothing to remove"]
    del node[parts[-1]]
    labels[parts] = label  # a problem with the key's default is the --unset's, not the file line's
    return []


def _has(node: dict | list, part: Any) -> bool:
    if isinstance(node, list):
        return isinstance(part, int) and part < len(node)
    return part in node


def parse_scenario(text: str, path: str = "<string>", overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Parse and validate YAML ``text``; raise :class:`ScenarioError` listing every problem.

    The YAML is read by :mod:`fedrecon.scenario.yaml_guard`: bounded, plain values only."""
    try:
        node, raw = compose(text)
    except YamlRefused as exc:
        raise ScenarioError([exc.where(path)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else f"{path}:1:1"
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        if "another document" in problem:
            problem = "a scenario file holds one document; a second one starts here"
        raise ScenarioError([f"{where}: not valid YAML: {problem}"]) from None
    positions = _positions(node) if node is not None else {}
    if raw is None and overrides:
        raw = {}
    if raw is None:
        raise ScenarioError([f"{path}:1:1: the file is empty; a scenario is a mapping of keys (name, clients, tasks, ...)"])
    if not isinstance(raw, dict):
        raise ScenarioError([f"{path}:1:1: a scenario is a mapping of keys (name, clients, tasks, ...), got {type(raw).__name__}"])
    raw, labels = apply_overrides(raw, overrides)
    source = SourceMap(path, positions, labels)
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(_typos_once(exc.errors()), key=lambda e: source.order(tuple(e["loc"])))
        raise ScenarioError([_describe(e, source) for e in errors]) from None
    problems = cross_checks(scenario, source)
    if problems:
        raise ScenarioError(problems)
    scenario._source = source
    return scenario


def resolve_path(base: Path, value: str | None) -> str | None:
    """``value`` made absolute against ``base`` (a URI such as ``sqlite:///x.db`` stays as it is)."""
    if value is None or "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def load_scenario(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Read a scenario file; relative paths in it are made absolute against its folder.

    A run folder's ``scenario.json`` (JSON is YAML) is read the same way: a resumed
    run goes through every check a new one does.
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError([f"{path}: scenario file not found"])
    try:
        text = read_text(path)
    except YamlRefused as exc:
        raise ScenarioError([exc.where(str(path))]) from None
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot be read ({exc.strerror})"]) from None
    scenario = parse_scenario(text, str(path), overrides)
    base = path.resolve().parent
    update = {section: getattr(scenario, section).model_copy(update={k: resolve_path(base, getattr(getattr(scenario, section), k))
                                                                   for k in keys})
              for section, keys in PATH_KEYS.items()}
    if scenario.sites is not None:  # each client's site folder, as the data's paths
        folders = [resolve_path(base, f) for f in scenario.sites.folders]
        update["sites"] = scenario.sites.model_copy(update={"folders": folders})
    if "root" not in scenario.data.model_fields_set:
        update["data"] = update["data"].model_copy(update={"root": default_data_root()})
    loaded = scenario.model_copy(update=update)
    loaded._source = source_of(scenario)
    return loaded


def scenario_json(scenario: Scenario) -> str:
    """The scenario as it travels and is saved: the keys the file set (defaults left
    out, so that the cross-checks read it back as they read the file), paths absolute."""
    return scenario.model_dump_json(exclude_unset=True)


def scenario_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def scenario_from_json(text: str) -> Scenario:
    """The scenario a client receives (checked by the server already: types only)."""
    return Scenario.model_validate_json(text)
