"""Building blocks of the scenario models: strict frozen models and per-client values."""

from __future__ import annotations

import re
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator


class Strict(BaseModel):
    """Unknown keys refused, values frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


def kind_shorthand(value: Any) -> Any:
    """``arrival: synchronous`` is short for ``arrival: {kind: synchronous}``."""
    return {"kind": value} if isinstance(value, str) else value


# ``package.module:attribute``, as Flower's pyproject names its apps.
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(value: str) -> bool:
    return bool(IMPORT_PATH.match(value))


def builtin_or_plugin(value: str, names, what: str) -> str:
    """``value`` if it names a built-in entry or is an import path, else the error listing them.

    Only the form of an import path is checked here; ``fedrecon validate`` imports it.
    """
    if value in names or is_import_path(value):
        return value
    if ":" in value:
        raise ValueError(f"{value!r} is not an import path package.module:attribute")
    raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(names)}, or a plug-in as package.module:attribute")
