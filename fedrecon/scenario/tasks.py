"""The ``tasks`` section: which classes, cut into tasks how, held by whom, arriving when."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from fedrecon.scenario.base import (ClassId, GroupChoice, PerClientOffset, PerClientRate, Round, Strict,
                                    kind_shorthand)

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


SPLIT_KINDS = (Disjoint, Overlap, Dirichlet, ExplicitSplit, GroupSplit)
Split = Annotated[Union[SPLIT_KINDS], Field(discriminator="kind")]


# --- arrival process: when each client's tasks arrive -----------------------------------------

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


PROCESS_KINDS = (Synchronous, Staggered, Poisson, ExplicitArrival)
ArrivalProcess = Annotated[Union[PROCESS_KINDS], Field(discriminator="kind")]


class Revisits(Strict):
    """Classes that arrive again later, at the same or another client, with new samples."""

    fraction: float | None = Field(None, gt=0.0, le=1.0, description="fraction of the arriving classes that arrive once more "
                                   "(seeded); or per_client")
    per_client: int | None = Field(None, ge=1, description="instead of fraction: this many of each client's classes arrive "
                                   "once more (seeded; with to: other, at another client)")
    shots: int = Field(ge=1, description="new training samples a revisit brings (never used before)")
    to: Literal["same", "other", "any"] = Field("any", description="a client that had the class, one that did not, or any")
    after: int = Field(1, ge=1, description="at least this many rounds after the class last arrived (at any client)")


class TasksConfig(Strict):
    """Which classes, how they are cut into tasks and split over clients, and when they arrive.

    The first ``num_classes`` classes of a seeded permutation are cut into tasks of
    ``classes_per_task``; ``split`` says which client holds which, ``arrival`` when.
    """

    num_classes: int | None = Field(None, ge=1, description="classes drawn from the dataset (seeded); not with split group or explicit")
    classes_per_task: int | None = Field(None, ge=1, description="classes in one task; not with split group")
    train_shots: int | None = Field(ge=1, description="training samples per class (divided between clients that share it); "
                                    "null: all of the class's training samples")
    test_shots: int | None = Field(ge=1, description="test samples per class, never used for training; null: every sample "
                                   "of the dataset's official test split")
    split: Split = Field(default_factory=Disjoint, description="which client holds which classes")
    arrival: ArrivalProcess = Field(default_factory=Synchronous, description="when each client's tasks arrive")
    revisits: Revisits | None = Field(None, description="classes that arrive a second time; null: none")

    @field_validator("split", "arrival", mode="before")
    @classmethod
    def _shorthand(cls, value):
        return kind_shorthand(value)
