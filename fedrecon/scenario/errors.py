"""Scenario errors: every problem as ``file:line:col: key: message``, all at once."""

from __future__ import annotations

from fedrecon.scenario.tasks import PROCESS_KINDS, SPLIT_KINDS


class ScenarioError(ValueError):
    """One or more problems in a scenario file; ``str()`` lists them one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# Pydantic puts the chosen ``kind`` of a union into error locations; they are not keys of the file.
UNION_TAGS = {m.model_fields["kind"].default for m in (*SPLIT_KINDS, *PROCESS_KINDS)}


def dotted(loc: tuple) -> str:
    """``('tasks', 'arrival', 'poisson', 'rate')`` as ``tasks.arrival.rate``."""
    return ".".join(str(p) for p in loc if p not in UNION_TAGS) or "(top level)"


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
        # a --set of a key in a section the file lacks labels the key, not its section
        labelled = [loc[:k] for k in range(len(loc), 0, -1) if loc[:k] in self.labels]
        if labelled:
            return labelled[0]
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


def source_of(scenario) -> SourceMap:
    """The source map a loaded scenario keeps (one without a file: a placeholder)."""
    return getattr(scenario, "_source", None) or SourceMap("<scenario>", {})
