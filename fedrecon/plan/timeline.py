"""The timeline, as ``fedrecon plan`` prints it."""

from __future__ import annotations

from collections.abc import Sequence

from fedrecon.plan.records import Plan


def _ranges(classes: Sequence[int], marked: set[int]) -> str:
    """``0,1,2,3,7`` as ``0-3,7``; a revisited class is marked ``*``."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        out.extend([f"{run[0]}-{run[-1]}"] if len(run) > 2 else map(str, run))
        run.clear()

    for c in classes:
        if c in marked:
            flush()
            out.append(f"{c}*")
            continue
        if run and c != run[-1] + 1:
            flush()
        run.append(c)
    flush()
    return ",".join(out)


def timeline(plan: Plan, title: str = "", show_classes: bool = False) -> str:
    """Round x client table of arriving classes, with totals and the plan's warnings.

    A cell is the number of classes arriving (``+k``: of which ``k`` revisits), ``.``
    for a present client with nothing due and ``-`` for an absent one; with
    ``show_classes`` the class ids instead of the number.
    """
    by = {(a.round, a.client): a for a in plan.arrivals}

    def cell(r: int, c: int) -> str:
        a = by.get((r, c))
        if a is None:
            return "." if plan.is_present(r, c) else "-"
        if show_classes:
            return _ranges(a.classes, set(a.revisits))
        new = len(a.classes) - len(a.revisits)
        return f"{new}+{len(a.revisits)}" if a.revisits else str(new)

    header = ["round", *(f"c{c}" for c in range(plan.clients)), "new", "seen"]
    rows, seen = [], 0
    for r in range(1, plan.rounds + 1):
        now = len(plan.classes_seen(r))
        rows.append([str(r), *(cell(r, c) for c in range(plan.clients)), str(now - seen), str(now)])
        seen = now
    per_client = [sum(len(a.classes) for a in plan.arrivals if a.client == c) for c in range(plan.clients)]
    rows.append(["total", *(str(k) for k in per_client), str(seen), str(seen)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(v.rjust(w) for v, w in zip(row, widths)).rstrip()

    samples = sum(len(a.sample_index) for a in plan.arrivals)
    revisits = sum(len(a.revisits) for a in plan.arrivals)
    out = [title] if title else []
    out += [line(header), *(line(row) for row in rows[:-1]), line(["-" * w for w in widths]), line(rows[-1]), ""]
    out.append(f"{len(plan.arrivals)} arrivals, {seen} classes, {revisits} revisits, {samples} training samples, "
               f"{sum(len(v) for v in plan.test_samples.values())} test samples")
    out.append("cells: classes arriving (+k revisits), '.' present and idle, '-' away or not sampled")
    out += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(out)
