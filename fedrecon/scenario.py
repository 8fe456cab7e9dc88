"""Scenario files: YAML into frozen, typed objects, with errors that point at the file."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from fedrecon.backbones import BACKBONES


class ScenarioError(ValueError):
    """One or more problems in a scenario file; ``str()`` lists them one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceMap:
    """Where each key of a YAML file is, so errors can name file, line and column."""

    def __init__(self, path: str, positions: dict[tuple, tuple[int, int]]):
        self.path = path
        self.positions = positions

    def locate(self, loc: tuple) -> tuple[tuple, str]:
        """The part of ``loc`` present in the file, and ``path:line:col`` of it."""
        found: tuple = ()
        for part in loc:
            if found + (part,) in self.positions:
                found += (part,)
        line, col = self.positions.get(found, (1, 1))
        return found, f"{self.path}:{line}:{col}"

    def error(self, loc: tuple, message: str) -> str:
        _, where = self.locate(loc)
        key = ".".join(str(p) for p in loc if p not in _UNION_TAGS) or "(top level)"
        return f"{where}: {key}: {message}"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """Where the samples come from."""

    dataset: Literal["omniglot"] = "omniglot"
    root: str = Field("../shared/data", description="data folder; a relative path is taken from the scenario file's folder")
    subset: Literal["background", "evaluation"] = Field("evaluation", description="Omniglot set the classes come from")
    image_size: int = Field(28, ge=8, le=105)


class ModelConfig(Strict):
    """The feature extractor clients and server share."""

    backbone: str = "conv4"
    checkpoint: str | None = Field(None, description="weights file; relative to the scenario file's folder")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r}; allowed: {', '.join(sorted(BACKBONES))}")
        return value


class ClientsConfig(Strict):
    count: int = Field(ge=1, le=100_000)


class Synchronous(Strict):
    """Every client receives its next task every round."""

    kind: Literal["synchronous"] = "synchronous"


class Staggered(Strict):
    """Client ``c`` receives its first task at round ``1 + c * offset``, then one a round."""

    kind: Literal["staggered"] = "staggered"
    offset: int = Field(1, ge=0)


Schedule = Annotated[Union[Synchronous, Staggered], Field(discriminator="kind")]
# Pydantic puts the chosen ``kind`` into error locations; they are not keys of the file.
_UNION_TAGS = {m.model_fields["kind"].default for m in (Synchronous, Staggered)}


class TasksConfig(Strict):
    """How the classes are cut into tasks and dealt to clients.

    The first ``num_classes`` classes of a seeded permutation are cut into tasks of
    ``classes_per_task``; task ``j`` goes to client ``j % clients.count``.
    """

    num_classes: int = Field(ge=1)
    classes_per_task: int = Field(ge=1)
    train_shots: int = Field(ge=1, description="training samples per class")
    test_shots: int = Field(ge=1, description="test samples per class, never used for training")
    schedule: Schedule = Field(default_factory=Synchronous)

    @field_validator("schedule", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


class MergeConfig(Strict):
    prototypes: str = Field("exact", description="merge policy of the class statistics")
    head: Literal["ncm"] = "ncm"
    metric: Literal["euclidean", "cosine"] = "euclidean"


class EvaluationConfig(Strict):
    every: int = Field(1, ge=1, description="evaluate every N rounds (the last round always)")
    where: Literal["server"] = "server"


class SimulationConfig(Strict):
    """Flower simulation engine resources for each virtual client."""

    num_cpus: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0.0)
    timeout: float = Field(600.0, gt=0, description="seconds the server waits for replies each round")


class Scenario(Strict):
    name: str = Field(min_length=1)
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    clients: ClientsConfig
    tasks: TasksConfig
    rounds: int | None = Field(None, ge=1, description="defaults to the round of the last arrival")
    merge: MergeConfig = Field(default_factory=MergeConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    _source: SourceMap | None = PrivateAttr(None)


def _positions(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = path + (key.value,)
            out[here] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _positions(value, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _positions(item, path + (i,), out)
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes inside an annotation (plain, Optional, or an annotated union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()):
        found += _models_in(arg)
    origin = getattr(annotation, "__origin__", None)
    if origin is not None and getattr(annotation, "__metadata__", None):
        found += _models_in(origin)
    return found


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the last key of ``loc`` (to list the allowed keys)."""
    model: type[BaseModel] = Scenario
    parts = list(loc[:-1])
    while parts:
        part = parts.pop(0)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        members = _models_in(field.annotation)
        if not members:
            return None
        if len(members) > 1 and parts:
            tag = parts.pop(0)
            members = [m for m in members if m.model_fields["kind"].default == tag] or members
        model = members[0]
    return model


def _describe(err: dict, source: SourceMap) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        allowed = sorted(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = "unknown key"
        if hint:
            msg += f"; did you mean '{hint[0]}'?"
        if allowed:
            msg += f" allowed: {', '.join(allowed)}"
        return source.error(loc, msg)
    if kind == "missing":
        return source.error(loc, "required key is missing")
    if kind == "literal_error":
        return source.error(loc, f"got {err.get('input')!r}; allowed: {err['ctx']['expected']}")
    if kind == "union_tag_invalid":
        return source.error(loc, f"kind {err['ctx']['tag']!r} is not known; allowed: {err['ctx']['expected_tags']}")
    message = err["msg"].removeprefix("Value error, ")
    return source.error(loc, f"{message} (got {err.get('input')!r})")


def resolve_path(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def parse_scenario(text: str, path: str = "<string>") -> Scenario:
    """Parse and validate YAML ``text``; raise :class:`ScenarioError` listing every problem."""
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ScenarioError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    source = SourceMap(path, _positions(node) if node is not None else {})
    if not isinstance(raw, dict):
        raise ScenarioError([f"{path}:1:1: a scenario is a mapping of keys (name, clients, tasks, ...), got {type(raw).__name__}"])
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: source.positions.get(source.locate(tuple(e["loc"]))[0], (0, 0)))
        raise ScenarioError([_describe(e, source) for e in errors]) from None
    problems = _cross_checks(scenario, source)
    if problems:
        raise ScenarioError(problems)
    scenario._source = source
    return scenario


def _cross_checks(s: Scenario, source: SourceMap) -> list[str]:
    problems = []
    if s.tasks.classes_per_task > s.tasks.num_classes:
        problems.append(source.error(("tasks", "classes_per_task"), f"{s.tasks.classes_per_task} is more than tasks.num_classes ({s.tasks.num_classes})"))
    return problems


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file; relative paths in it are made absolute against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError([f"{path}: scenario file not found"])
    scenario = parse_scenario(path.read_text(), str(path))
    base = path.resolve().parent
    data = scenario.data.model_copy(update={"root": resolve_path(base, scenario.data.root)})
    model = scenario.model.model_copy(update={"checkpoint": resolve_path(base, scenario.model.checkpoint)})
    return scenario.model_copy(update={"data": data, "model": model})


def source_of(scenario: Scenario) -> SourceMap:
    return getattr(scenario, "_source", None) or SourceMap("<scenario>", {})
