"""Scenario files: YAML into frozen, typed objects, with errors that point at the file."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)

from fedrecon.adapters import ADAPTER_POLICIES, DEFAULT_TARGETS
from fedrecon.backbones import BACKBONES, MODALITY
from fedrecon.data import DATASETS
from fedrecon.data import MODALITY as DATA_MODALITY
from fedrecon.heads import DEFAULT_RANDOM_FEATURES, DEFAULT_RIDGE_LAMBDA, DEFAULT_SHRINKAGE, HEADS


class ScenarioError(ValueError):
    """One or more problems in a scenario file; ``str()`` lists them one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class SourceMap:
    """Where each key of a YAML file is, so errors can name file, line and column.

    ``positions`` maps a key path to its ``(line, column)`` in the file; ``labels``
    maps the paths a ``--set`` override wrote to the override's own text, which is
    where the user has to look for those.
    """

    def __init__(self, path: str, positions: dict[tuple, tuple[int, int]], labels: dict[tuple, str] | None = None):
        self.path = path
        self.positions = positions
        self.labels = labels or {}

    def _found(self, loc: tuple) -> tuple:
        found: tuple = ()
        for part in loc:
            if found + (part,) in self.positions or found + (part,) in self.labels:
                found += (part,)
        return found

    def locate(self, loc: tuple) -> tuple[tuple, str]:
        """The part of ``loc`` present in the file, and ``path:line:col`` of it."""
        found = self._found(loc)
        if found in self.labels:
            return found, self.labels[found]
        line, col = self.positions.get(found, (1, 1))
        return found, f"{self.path}:{line}:{col}"

    def order(self, loc: tuple) -> tuple[int, int]:
        """Sort key: overrides first, then file order."""
        found = self._found(loc)
        return (0, 0) if found in self.labels else self.positions.get(found, (0, 0))

    def error(self, loc: tuple, message: str) -> str:
        _, where = self.locate(loc)
        return f"{where}: {dotted(loc)}: {message}"


def dotted(loc: tuple) -> str:
    """``('tasks', 'arrival', 'poisson', 'rate')`` as ``tasks.arrival.rate``."""
    return ".".join(str(p) for p in loc if p not in _UNION_TAGS) or "(top level)"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- values given once for all clients or as a list with one per client -------------

def _either(expected: str):
    """A wrap validator for ``scalar | list``: one error line instead of one per member.

    Pydantic reports a failed union once per member ("not an int", "not a list");
    the user needs only the member that matches what they wrote.
    """

    def validate(value: Any, handler):
        try:
            return handler(value)
        except ValidationError as exc:
            want_list = isinstance(value, list)
            detail = []
            for err in exc.errors():
                member, *rest = err["loc"] or ("",)
                if str(member).startswith("list[") != want_list:
                    continue
                where = f"item {rest[0]}: " if rest else ""
                detail.append(f"{where}{err['msg'].removeprefix('Value error, ')}")
            reason = "; ".join(detail[:3]) or f"got {type(value).__name__}"
            raise ValueError(f"expected {expected}: {reason}") from None

    return WrapValidator(validate)


Round = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
ClassId = Annotated[int, Field(ge=0)]
PerClientRound = Annotated[Union[Round, list[Round]], _either("a round (>= 1) or a list of them, one per client")]
PerClientLeave = Annotated[
    Union[Round, list[Union[Round, None]], None],
    _either("a round (>= 1), null, or a list of them, one per client"),
]
PerClientProbability = Annotated[
    Union[Probability, list[Probability]],
    _either("a probability in [0, 1) or a list of them, one per client"),
]
PerClientOffset = Annotated[
    Union[Annotated[int, Field(ge=0)], list[Annotated[int, Field(ge=0)]]],
    _either("an offset (>= 0) or a list of them, one per client"),
]
PerClientRate = Annotated[
    Union[Annotated[float, Field(gt=0)], list[Annotated[float, Field(gt=0)]]],
    _either("a rate (> 0) or a list of them, one per client"),
]
GroupChoice = Annotated[
    Union[Annotated[int, Field(ge=1)], list[str]],
    _either("a number of groups (>= 1) or a list of group names"),
]


def per_client(value: Any, count: int) -> list:
    """``value`` for each of ``count`` clients (a list is already per client)."""
    return list(value) if isinstance(value, list) else [value] * count


def _kind_shorthand(value: Any) -> Any:
    """``arrival: synchronous`` is short for ``arrival: {kind: synchronous}``."""
    return {"kind": value} if isinstance(value, str) else value


# --- data and model ----------------------------------------------------------------

def _registered(value: str, names, what: str) -> str:
    """``value`` if it names an entry of a registry, else the error listing them."""
    if value not in names:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(names)}")
    return value


class DataConfig(Strict):
    """Where the samples come from."""

    dataset: str = Field("omniglot", description="omniglot, clinc150, hwu64, text (a CSV/TSV/JSONL file) or image_folder (<class>/<image>)")
    root: str = Field("../shared/data", description="data folder; a relative path is taken from the scenario file's folder")
    subset: Literal["background", "evaluation"] = Field("evaluation", description="Omniglot set the classes come from")
    image_size: int = Field(28, ge=8, le=512, description="images are resized to this many pixels a side (Omniglot: at most 105)")
    path: str | None = Field(None, description="text: the training file; image_folder: the training folder (relative to the scenario file)")
    test_path: str | None = Field(None, description="text / image_folder: the official test split, same layout; null: none")
    text_column: str | None = Field(None, description="text: column (CSV) or key (JSONL) of the text")
    label_column: str | None = Field(None, description="text: column or key of the class label")
    group_column: str | None = Field(None, description="text: column or key of a class's group (optional)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _registered(value, DATASETS, "dataset")


class ModelConfig(Strict):
    """The feature extractor clients and server share."""

    backbone: str = Field("conv4", description="feature extractor, by name")
    checkpoint: str | None = Field(None, description="weights file; relative to the scenario file's folder")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    embedding_cache: str | None = Field(None, description="folder where frozen-backbone features are kept between runs "
                                        "(relative to the scenario file); null: in memory only")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return _registered(value, sorted(BACKBONES), "backbone")


# --- clients -------------------------------------------------------------------------

class ClientsConfig(Strict):
    """Who takes part, and when.

    A client is present in round ``r`` when ``join <= r < leave`` and it did not drop
    out that round; of the present clients a seeded ``fraction`` is sampled. A task
    due while a client is away arrives in the next round it is present and sampled.
    """

    count: int = Field(ge=1, le=100_000, description="number of clients")
    join: PerClientRound = Field(1, description="round a client joins; one value for all or a list, one per client")
    leave: PerClientLeave = Field(None, description="first round a client is gone for good; null: it stays to the end")
    dropout: PerClientProbability = Field(0.0, description="probability that a client is away in a round (seeded)")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of the present clients sampled each round (at least one)")


# --- class split across clients ---------------------------------------------------------

class Disjoint(Strict):
    """Tasks of ``classes_per_task`` classes dealt in turn: task ``j`` to client ``j % count``."""

    kind: Literal["disjoint"] = "disjoint"


class Overlap(Strict):
    """A fraction of the classes is shared; each shared class's training samples are
    divided between the clients that hold it."""

    kind: Literal["overlap"] = "overlap"
    shared: float = Field(gt=0.0, le=1.0, description="fraction of tasks.num_classes held by several clients")
    among: int | None = Field(None, ge=2, description="clients holding each shared class (seeded); null: all clients")


class Dirichlet(Strict):
    """Each class's training samples are divided between clients in proportions drawn
    from Dirichlet(alpha, ..., alpha), as in federated class-incremental papers; small
    alpha gives each class to few clients."""

    kind: Literal["dirichlet"] = "dirichlet"
    alpha: float = Field(gt=0.0, description="concentration; small: skewed, large: even")


class ExplicitSplit(Strict):
    """The classes of each client, listed (dataset class ids); a class listed for
    several clients has its training samples divided between them."""

    kind: Literal["explicit"] = "explicit"
    clients: list[list[ClassId]] = Field(description="one list of class ids per client")


class GroupSplit(Strict):
    """A task is whole groups (Omniglot: alphabets); task ``j`` goes to client ``j % count``."""

    kind: Literal["group"] = "group"
    groups: GroupChoice = Field(description="how many groups to draw (seeded), or their names")
    groups_per_task: int = Field(1, ge=1, description="groups in one task")


Split = Annotated[Union[Disjoint, Overlap, Dirichlet, ExplicitSplit, GroupSplit], Field(discriminator="kind")]


# --- arrival: when each client's tasks arrive ---------------------------------------------

class Synchronous(Strict):
    """Every client receives its next task every ``every`` rounds, from round 1."""

    kind: Literal["synchronous"] = "synchronous"
    every: int = Field(1, ge=1, description="rounds between two tasks of a client")


class Staggered(Strict):
    """Client ``c`` receives its first task at round ``1 + c * offset`` (or ``1 + offset[c]``),
    then one every ``every`` rounds."""

    kind: Literal["staggered"] = "staggered"
    offset: PerClientOffset = Field(1, description="start delay: per client index (a number) or each client's own (a list)")
    every: int = Field(1, ge=1, description="rounds between two tasks of a client")


class Poisson(Strict):
    """Each client's tasks arrive as a seeded Poisson process: exponential gaps with mean
    ``1 / rate`` rounds; a task arrives in the round its time falls in."""

    kind: Literal["poisson"] = "poisson"
    rate: PerClientRate = Field(description="expected tasks per round; one for all or a list, one per client")


class Event(Strict):
    """One arrival at one client. Without classes, groups or count it is the client's
    next task of the split."""

    round: Round = Field(description="round the task is due")
    classes: list[ClassId] | None = Field(None, description="dataset class ids that arrive (new samples each time)")
    groups: list[str] | None = Field(None, description="groups whose classes all arrive")
    count: int | None = Field(None, ge=1, description="the next this many classes of the client's split")


class ExplicitArrival(Strict):
    """Per client, the rounds at which something arrives and what."""

    kind: Literal["explicit"] = "explicit"
    clients: dict[int, list[Event]] = Field(description="client id -> list of events")


Arrival = Annotated[Union[Synchronous, Staggered, Poisson, ExplicitArrival], Field(discriminator="kind")]

# Pydantic puts the chosen ``kind`` into error locations; they are not keys of the file.
_UNION_TAGS = {
    m.model_fields["kind"].default
    for m in (Disjoint, Overlap, Dirichlet, ExplicitSplit, GroupSplit, Synchronous, Staggered, Poisson, ExplicitArrival)
}


class Revisits(Strict):
    """Classes that arrive again later, at the same or another client, with new samples."""

    fraction: float = Field(gt=0.0, le=1.0, description="fraction of the arriving classes that arrive once more")
    shots: int = Field(ge=1, description="new training samples a revisit brings (never used before)")
    to: Literal["same", "other", "any"] = Field("any", description="a client that had the class, one that did not, or any")
    after: int = Field(1, ge=1, description="at least this many rounds after the class last arrived (at any client)")


class TasksConfig(Strict):
    """Which classes, how they are cut into tasks and split over clients, and when they arrive.

    The first ``num_classes`` classes of a seeded permutation are cut into tasks of
    ``classes_per_task``; ``split`` says which client holds which, ``arrival`` when.
    ``schedule`` is accepted as the old name of ``arrival``.
    """

    num_classes: int | None = Field(None, ge=1, description="classes drawn from the dataset (seeded); not with split group or explicit")
    classes_per_task: int | None = Field(None, ge=1, description="classes in one task; not with split group")
    train_shots: int | None = Field(ge=1, description="training samples per class (divided between clients that share it); "
                                    "null: all of the class's training samples")
    test_shots: int | None = Field(ge=1, description="test samples per class, never used for training; null: every sample "
                                   "of the dataset's official test split")
    split: Split = Field(default_factory=Disjoint, description="which client holds which classes")
    arrival: Arrival = Field(default_factory=Synchronous, description="when each client's tasks arrive")
    revisits: Revisits | None = Field(None, description="classes that arrive a second time; null: none")

    @model_validator(mode="before")
    @classmethod
    def _old_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schedule" in data:
            if "arrival" in data:
                raise ValueError("give arrival or its old name schedule, not both")
            data = {**data, "arrival": data["schedule"]}
            del data["schedule"]
        return data

    @field_validator("split", "arrival", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _kind_shorthand(value)


class MergeConfig(Strict):
    """How the server merges the clients' class statistics."""

    method: Literal["prototypes", "fedavg_finetune"] = Field(
        "prototypes", description="prototypes: clients send class statistics, merged by merge.prototypes; fedavg_finetune: a "
                                  "baseline, FedAvg of the backbone and a growing linear head fine-tuned on each task (section finetune)")
    prototypes: str = Field("exact", description="merge policy of the class statistics: exact, fedrecon, fedproto, or the "
                                                 "baselines local (no merge) and centralized (one site learns every arrival)")
    head: str = Field("ncm", description="classifier built from the merged statistics: ncm, lda or ridge")
    metric: Literal["euclidean", "cosine"] = Field("euclidean", description="ncm: distance to the class means")
    shrinkage: float = Field(DEFAULT_SHRINKAGE, ge=0.0, le=1.0, description="lda: weight of the scaled identity in the shared covariance")
    ridge_lambda: float = Field(DEFAULT_RIDGE_LAMBDA, gt=0.0, description="ridge: regularisation added to the Gram matrix")
    random_features: int = Field(DEFAULT_RANDOM_FEATURES, ge=1, le=20_000, description="ridge: random ReLU features (Gram is this squared)")
    adapters: str = Field("none", description="merge policy of the clients' LoRA adapters: none (each keeps its own), fedavg (A and B "
                          "averaged: inexact), ffa (A frozen at a shared seed, B averaged: exact) or stack (ranks stacked and folded: exact)")

    @field_validator("head")
    @classmethod
    def _known_head(cls, value: str) -> str:
        return _registered(value, HEADS, "head")

    @field_validator("adapters")
    @classmethod
    def _known_adapter_policy(cls, value: str) -> str:
        return _registered(value, ADAPTER_POLICIES, "adapter merge policy")


class AdaptersConfig(Strict):
    """LoRA adapters the clients fine-tune on their tasks (docs/adapters.md); frozen: none."""

    schedule: Literal["frozen", "first_task", "every_task"] = Field(
        "frozen", description="frozen: no adapter; first_task: a client adapts on its first task, then keeps it; "
                              "every_task: on each task, the later ones at lr_later")
    rank: int = Field(4, ge=1, le=256, description="rank of each adapter")
    alpha: float = Field(8.0, gt=0.0, description="scale of the update is alpha / rank")
    targets: list[str] | None = Field(None, description="module-name substrings to adapt; null: the backbone's default "
                                                        "(conv4: every conv; MiniLM: attention and MLP linears; EfficientNet: pointwise convs)")
    lr: float = Field(1e-3, gt=0.0, description="learning rate (AdamW) of a client's first task")
    lr_later: float = Field(1e-4, gt=0.0, description="every_task: learning rate of the later tasks (slow, so old prototypes stay near)")
    epochs: int = Field(1, ge=1, le=1000, description="passes over a task's samples")
    batch_size: int = Field(32, ge=1, description="samples per step")
    loss: Literal["cross_entropy", "prototypical"] = Field(
        "cross_entropy", description="over the task's classes only: cosine classifier started at the class means, or distances to the means")
    temperature: float = Field(0.1, gt=0.0, description="of the cosine logits")
    staleness: Literal["keep", "compensate"] = Field(
        "keep", description="statistics computed under an older adapter: keep them, or move them by the drift the current data shows (SDC)")
    drift_sigma: float = Field(0.5, gt=0.0, description="compensate: width of the Gaussian weighting drifts by distance to a prototype (feature units)")
    mixed_precision: bool = Field(True, description="bf16 autocast when training on a GPU")
    rounds: int = Field(0, ge=0, le=100, description="0: each client trains on its task and summarises it under its own "
                                                     "adapter, in one message; N: the round's trainers first run N federated "
                                                     "rounds of adapter training (epochs each, merged by merge.adapters), then "
                                                     "summarise their tasks under the merged adapter")


class FinetuneConfig(Strict):
    """Training of the ``merge.method: fedavg_finetune`` baseline (each task, on its samples only)."""

    lr: float = Field(1e-4, gt=0.0, description="learning rate (AdamW) of the backbone")
    head_lr: float = Field(1e-2, gt=0.0, description="learning rate of the linear head")
    epochs: int = Field(3, ge=1, le=1000, description="passes over a task's samples")
    batch_size: int = Field(32, ge=1, description="samples per step")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")


class EvaluationConfig(Strict):
    """When and where accuracy is measured."""

    every: int = Field(1, ge=1, description="evaluate every N rounds (the last round always)")
    where: Literal["server", "clients"] = Field(
        "server", description="server: the server scores all test samples; clients: each client scores its share and the server adds up the counts"
    )


class SimulationConfig(Strict):
    """Flower simulation engine resources for each virtual client."""

    num_cpus: int = Field(1, ge=1, description="CPUs per virtual client")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs (or a fraction) per virtual client")
    timeout: float = Field(600.0, gt=0, description="seconds the server waits for replies each round")


class FaultInjection(Strict):
    """A client that misbehaves on purpose in one round (for tests and demos)."""

    client: int = Field(ge=0, description="client id")
    round: Round = Field(description="round whose task message carries the fault")
    kind: Literal["raise", "timeout", "garbage"] = Field(description="raise: the ClientApp raises; timeout: it answers too late; garbage: it sends NaN statistics")
    seconds: float | None = Field(None, gt=0, description="timeout: how long the client stalls; null: simulation.timeout + 2")


class FaultsConfig(Strict):
    """What the server does about clients that fail, and faults to inject."""

    retries: int = Field(3, ge=0, description="times a failed task is offered again to its client (in its next messages)")
    max_reply_bytes: int | None = Field(None, ge=1024, description="a reply with more bytes of arrays is rejected unread; default: twice what a valid reply to its task holds, plus 1 MB")
    inject: list[FaultInjection] = Field(default_factory=list, description="faults to inject, one per client and round")


class Scenario(Strict):
    """A fedrecon scenario: who learns which classes when, and how the server merges."""

    name: str = Field(min_length=1, description="name of the run (and of its run folder)")
    seed: int = Field(0, ge=0, description="seed of every random choice of the plan")
    data: DataConfig = Field(default_factory=DataConfig, description="where the samples come from")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the shared feature extractor")
    clients: ClientsConfig = Field(description="who takes part, and when")
    tasks: TasksConfig = Field(description="classes, tasks, split, arrival and revisits")
    rounds: int | None = Field(None, ge=1, description="rounds to run; null: until the last arrival")
    merge: MergeConfig = Field(default_factory=MergeConfig, description="how the server merges")
    adapters: AdaptersConfig = Field(default_factory=AdaptersConfig, description="LoRA adapters fine-tuned by the clients")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig, description="training of the fedavg_finetune baseline")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="when accuracy is measured")
    simulation: SimulationConfig = Field(default_factory=SimulationConfig, description="Flower simulation resources")
    faults: FaultsConfig = Field(default_factory=FaultsConfig, description="retries of failed tasks and injected faults")
    _source: SourceMap | None = PrivateAttr(None)


# --- JSON Schema ----------------------------------------------------------------------------

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
    # ``schedule`` (the old name of ``arrival``) is left out: editors should not suggest it.
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(scenario_json_schema(), indent=2) + "\n"


# --- errors -----------------------------------------------------------------------------------

def _positions(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            # Integer keys (client ids) are ints in the loaded data and in pydantic's locations.
            name = int(key.value) if key.tag == "tag:yaml.org,2002:int" else key.value
            here = path + (name,)
            out[here] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _positions(value, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = (item.start_mark.line + 1, item.start_mark.column + 1)
            _positions(item, path + (i,), out)
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes inside an annotation (plain, Optional, a container or a union)."""
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
        if isinstance(part, int):  # a list index or a client id: same model
            continue
        field = model.model_fields.get(part)
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
            owner = _model_at(loc)
            hint = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields) if owner else [], n=1)
            if hint:
                meant.add(loc[:-1] + (hint[0],))
    return [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"]) in meant)]


def _kinds_at(loc: tuple) -> str:
    union = {"split": Split, "arrival": Arrival}.get(str(loc[-1]) if loc else "")
    kinds = dict.fromkeys(m.model_fields["kind"].default for m in _models_in(union)) if union else {}
    return ", ".join(repr(k) for k in kinds) or "see the docs"


def resolve_path(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


# --- overrides: --set key.path=value ------------------------------------------------------------

def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> tuple[dict, dict[tuple, str]]:
    """Apply ``key.path=value`` overrides to the loaded YAML; the value is read as YAML.

    Returns the new mapping and, for each path written, the override's text (errors
    about that key name the override instead of a line of the file).
    """
    problems, labels = [], {}
    for text in overrides:
        key, sep, value_text = text.partition("=")
        parts = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
        label = f"--set {text}"
        if not sep or not key.strip() or "" in parts:
            problems.append(f"{label}: expected key.path=value, e.g. --set tasks.num_classes=50")
            continue
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError as exc:
            problems.append(f"{label}: value is not valid YAML: {getattr(exc, 'problem', exc)}")
            continue
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node[part] if _has(node, part) else None
            if isinstance(child, str) and parts[depth + 1] != "kind":
                child = _kind_shorthand(child)
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


def _has(node: dict | list, part: Any) -> bool:
    if isinstance(node, list):
        return isinstance(part, int) and part < len(node)
    return part in node


# --- loading --------------------------------------------------------------------------------------

def parse_scenario(text: str, path: str = "<string>", overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Parse and validate YAML ``text``; raise :class:`ScenarioError` listing every problem."""
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ScenarioError([f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    positions = _positions(node) if node is not None else {}
    if raw is None and overrides:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError([f"{path}:1:1: a scenario is a mapping of keys (name, clients, tasks, ...), got {type(raw).__name__}"])
    tasks = raw.get("tasks")
    if isinstance(tasks, dict) and "schedule" in tasks and "arrival" not in tasks:
        # The old name: read as ``arrival`` (so --set tasks.arrival... applies to it);
        # errors inside it point at the old key.
        raw["tasks"] = {("arrival" if k == "schedule" else k): v for k, v in tasks.items()}
        for loc, where in list(positions.items()):
            if loc[:2] == ("tasks", "schedule"):
                positions[("tasks", "arrival") + loc[2:]] = where
    raw, labels = apply_overrides(raw, overrides)
    source = SourceMap(path, positions, labels)
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as exc:
        errors = sorted(_typos_once(exc.errors()), key=lambda e: source.order(tuple(e["loc"])))
        raise ScenarioError([_describe(e, source) for e in errors]) from None
    problems = _cross_checks(scenario, source)
    if problems:
        raise ScenarioError(problems)
    scenario._source = source
    return scenario


def _cross_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Checks between keys that need no dataset; every problem found, not just the first."""
    problems: list[str] = []

    def problem(loc: tuple, message: str) -> None:
        problems.append(source.error(loc, message))

    t, c, n = s.tasks, s.clients, s.clients.count
    split, arrival = t.split.kind, t.arrival.kind
    problems += _adapter_checks(s, source)
    problems += _method_checks(s, source)
    chooses_classes = split not in ("group", "explicit")
    if chooses_classes and t.num_classes is None:
        problem(("tasks", "num_classes"), f"required key is missing (split {split} draws this many classes)")
    if not chooses_classes and t.num_classes is not None:
        problem(("tasks", "num_classes"), f"not used with split {split}: the split names the classes; remove it")
    if split != "group" and t.classes_per_task is None:
        problem(("tasks", "classes_per_task"), "required key is missing")
    if split == "group" and t.classes_per_task is not None:
        problem(("tasks", "classes_per_task"), "not used with split group: a task is whole groups; remove it")
    if t.num_classes is not None and t.classes_per_task is not None and t.classes_per_task > t.num_classes:
        problem(("tasks", "classes_per_task"), f"{t.classes_per_task} is more than tasks.num_classes ({t.num_classes})")

    per_client_lists = [
        (("clients", "join"), c.join),
        (("clients", "leave"), c.leave),
        (("clients", "dropout"), c.dropout),
        (("tasks", "arrival", "offset"), getattr(t.arrival, "offset", None)),
        (("tasks", "arrival", "rate"), getattr(t.arrival, "rate", None)),
        (("tasks", "split", "clients"), getattr(t.split, "clients", None)),
    ]
    for loc, value in per_client_lists:
        if isinstance(value, list) and len(value) != n:
            problem(loc, f"has {len(value)} values, one per client is needed (clients.count = {n})")

    joins = per_client(c.join, n) if not isinstance(c.join, list) or len(c.join) == n else []
    leaves = per_client(c.leave, n) if not isinstance(c.leave, list) or len(c.leave) == n else []
    for i, (j, lv) in enumerate(zip(joins, leaves)):
        loc = ("clients", "leave", i) if isinstance(c.leave, list) else ("clients", "leave")
        if lv is not None and lv <= j:
            problem(loc, f"client {i} leaves in round {lv} but joins in round {j}: leave must be after join")
            if not isinstance(c.leave, list) and not isinstance(c.join, list):
                break  # the same pair for every client: say it once
    if s.rounds is not None:
        for i, j in enumerate(joins):
            if j > s.rounds:
                loc = ("clients", "join", i) if isinstance(c.join, list) else ("clients", "join")
                problem(loc, f"client {i} joins in round {j}, after the last round ({s.rounds})")
                if not isinstance(c.join, list):
                    break

    if split == "overlap":
        if t.split.among is not None and t.split.among > n:
            problem(("tasks", "split", "among"), f"{t.split.among} clients, but clients.count is {n}")
        if t.num_classes is not None and round(t.split.shared * t.num_classes) < 1:
            problem(("tasks", "split", "shared"), f"{t.split.shared} of {t.num_classes} classes is less than one class")
    holders = 0
    if split == "overlap":
        holders = t.split.among or n
    if split == "explicit":
        counts: dict[int, int] = {}
        for classes in t.split.clients:
            for cls in set(classes):
                counts[cls] = counts.get(cls, 0) + 1
        holders = max(counts.values(), default=0)
    if t.train_shots is not None and holders > t.train_shots:
        problem(("tasks", "train_shots"), f"{t.train_shots} is fewer than the {holders} clients that share a class (each needs one sample)")
    if split == "explicit":
        for i, classes in enumerate(t.split.clients):
            seen: set[int] = set()
            for k, cls in enumerate(classes):
                if cls in seen:
                    problem(("tasks", "split", "clients", i, k), f"class {cls} is listed twice for client {i} (a second arrival is a revisit: use tasks.revisits)")
                seen.add(cls)
    if split in ("overlap", "dirichlet") and n == 1:
        problem(("tasks", "split", "kind"), f"split {split} needs at least two clients (clients.count is 1)")

    if arrival == "explicit":
        for client, events in t.arrival.clients.items():
            if not 0 <= client < n:
                problem(("tasks", "arrival", "clients", client), f"no client {client}: ids are 0..{n - 1} (clients.count = {n})")
            for k, event in enumerate(events):
                here = ("tasks", "arrival", "clients", client, k)
                given = [key for key in ("classes", "groups", "count") if getattr(event, key) is not None]
                if len(given) > 1:
                    problem(here + (given[1],), f"give one of classes, groups or count, not {' and '.join(given)}")
                if s.rounds is not None and event.round > s.rounds:
                    problem(here + ("round",), f"round {event.round} is after the last round ({s.rounds})")
                if k and event.round < events[k - 1].round:
                    problem(here + ("round",), f"round {event.round} comes before the previous event's round {events[k - 1].round}; list events in order")
    problems += _fault_checks(s, source)
    problems += _data_checks(s, source)
    if t.revisits is not None:
        if t.revisits.to == "other" and n == 1:
            problem(("tasks", "revisits", "to"), "'other' needs at least two clients (clients.count is 1)")
        if s.rounds is not None and t.revisits.after >= s.rounds:
            problem(("tasks", "revisits", "after"), f"{t.revisits.after} rounds after a first arrival is past the last round ({s.rounds})")
    return problems


def _adapter_checks(s: Scenario, source: SourceMap) -> list[str]:
    a, problems = s.adapters, []
    if a.schedule == "frozen":
        if s.merge.adapters != "none":
            problems.append(source.error(("merge", "adapters"), f"{s.merge.adapters!r} merges adapters, but adapters.schedule is "
                                                                  "frozen (no adapter): set a schedule or remove it"))
        return problems
    if a.targets is None and s.model.backbone not in DEFAULT_TARGETS:
        problems.append(source.error(("adapters", "schedule"), f"backbone {s.model.backbone} has no layers to adapt "
                                                               f"(adapters work on {', '.join(sorted(DEFAULT_TARGETS))})"))
    if a.rounds and s.merge.adapters == "none":
        problems.append(source.error(("adapters", "rounds"), "adapter rounds merge the trainers' adapters, but merge.adapters "
                                                             "is none: use fedavg, ffa or stack, or rounds 0"))
    if a.rounds and a.staleness == "compensate":
        problems.append(source.error(("adapters", "rounds"), "compensate measures drift within one task message; with adapter "
                                                             "rounds use staleness keep"))
    if a.staleness == "compensate" and s.merge.head == "ridge":
        problems.append(source.error(("adapters", "staleness"), "compensate cannot move the ridge head's random-feature "
                                                                "statistics: use keep, or head ncm or lda"))
    return problems


def _method_checks(s: Scenario, source: SourceMap) -> list[str]:
    """``fedavg_finetune`` trains its own head: the keys of the prototype heads and
    adapters do not apply, and are refused rather than silently ignored."""
    if s.merge.method == "prototypes":
        if "finetune" in s.model_fields_set:
            return [source.error(("finetune",), "used only by merge.method fedavg_finetune; remove it")]
        return []
    problems = []
    for key in ("prototypes", "head", *_HEAD_KEYS):
        # a default written out (shipped scenarios say head: ncm) changes nothing; another value would be ignored
        if getattr(s.merge, key) != MergeConfig.model_fields[key].default:
            problems.append(source.error(("merge", key), "not used by merge.method fedavg_finetune (a linear head "
                                                         "trained with cross-entropy); remove it"))
    if s.adapters.schedule != "frozen":
        problems.append(source.error(("adapters", "schedule"), "fedavg_finetune trains the whole backbone: "
                                                               "adapters.schedule must be frozen"))
    if s.evaluation.where == "clients":
        problems.append(source.error(("evaluation", "where"), "clients do not score fedavg_finetune models: use server"))
    if s.model.backbone == "pixels":
        problems.append(source.error(("model", "backbone"), "pixels has no weights to fine-tune; use conv4, "
                                                            "all-minilm-l6-v2 or efficientnet-lite0"))
    return problems


def _fault_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Injected faults name existing clients and rounds, at most one per client and round."""
    problems, seen = [], set()
    for k, fault in enumerate(s.faults.inject):
        here = ("faults", "inject", k)
        if s.merge.prototypes == "centralized" and fault.client != 0:
            problems.append(source.error(here + ("client",), f"centralized runs one site (client 0): every task goes there, "
                                                             f"so client {fault.client} never gets one"))
            continue
        if fault.client >= s.clients.count:
            problems.append(source.error(here + ("client",), f"no client {fault.client}: ids are 0..{s.clients.count - 1}"))
        if s.rounds is not None and fault.round > s.rounds:
            problems.append(source.error(here + ("round",), f"round {fault.round} is after the last round ({s.rounds})"))
        if (fault.client, fault.round) in seen:
            problems.append(source.error(here, f"client {fault.client} already has a fault in round {fault.round}"))
        seen.add((fault.client, fault.round))
    return problems


_HEAD_KEYS = {"metric": "ncm", "shrinkage": "lda", "ridge_lambda": "ridge", "random_features": "ridge"}
_TEXT_KEYS = ("text_column", "label_column", "group_column")


def _data_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Dataset, backbone and head keys that only make sense together."""
    problems: list[str] = []
    d = s.data
    if d.dataset in ("text", "image_folder") and d.path is None:
        problems.append(source.error(("data", "path"), f"required key is missing (dataset {d.dataset} reads it)"))
    if d.dataset == "text":
        for key in ("text_column", "label_column"):
            if getattr(d, key) is None:
                problems.append(source.error(("data", key), "required key is missing (dataset text)"))
    else:
        for key in _TEXT_KEYS:
            if getattr(d, key) is not None:
                problems.append(source.error(("data", key), f"used only by dataset text, not {d.dataset}; remove it"))
    if d.dataset not in ("text", "image_folder"):
        for key in ("path", "test_path"):
            if getattr(d, key) is not None:
                problems.append(source.error(("data", key), f"not used by dataset {d.dataset}; remove it"))
    if d.dataset == "omniglot" and d.image_size > 105:
        problems.append(source.error(("data", "image_size"), f"Omniglot drawings are 105 pixels; {d.image_size} is more"))
    reads, gets = MODALITY.get(s.model.backbone), DATA_MODALITY.get(d.dataset)
    if reads and gets and reads != gets:
        problems.append(source.error(("model", "backbone"), f"{s.model.backbone} reads {reads}, dataset {d.dataset} is {gets}"))
    for key, head in _HEAD_KEYS.items():
        if key in s.merge.model_fields_set and s.merge.head != head:
            problems.append(source.error(("merge", key), f"used only by head {head}, not {s.merge.head}; remove it"))
    return problems


def load_scenario(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Read a scenario file; relative paths in it are made absolute against its folder."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError([f"{path}: scenario file not found"])
    scenario = parse_scenario(path.read_text(), str(path), overrides)
    base = path.resolve().parent
    data = scenario.data.model_copy(update={k: resolve_path(base, getattr(scenario.data, k)) for k in ("root", "path", "test_path")})
    model = scenario.model.model_copy(update={k: resolve_path(base, getattr(scenario.model, k))
                                              for k in ("checkpoint", "embedding_cache")})
    loaded = scenario.model_copy(update={"data": data, "model": model})
    loaded._source = source_of(scenario)
    return loaded


def source_of(scenario: Scenario) -> SourceMap:
    return getattr(scenario, "_source", None) or SourceMap("<scenario>", {})


# --- the key reference (``fedrecon schema --keys``, pasted into docs/scenarios.md) ---------------

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
        members = _models_in(field.annotation)
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
