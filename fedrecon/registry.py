"""Small explicit registries keyed by YAML names (merge policies, adapter merges)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def registrar(table: dict[str, Callable]) -> Callable[[str], Callable[[T], T]]:
    """A decorator factory: ``@register("name")`` puts a class into ``table``."""

    def register(name: str) -> Callable[[T], T]:
        def add(cls: T) -> T:
            table[name] = cls
            return cls

        return add

    return register


def create(table: dict[str, Callable], name: str, key: str):
    """A new instance of ``table[name]``, or an error naming the YAML ``key`` and what it allows."""
    if name not in table:
        raise ValueError(f"unknown {key} {name!r}; allowed: {', '.join(sorted(table))}")
    return table[name]()
