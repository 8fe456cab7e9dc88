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


GRID_CLIENTS = 40  # past this many clients a grid is too wide to read: the summary instead
SUMMARY_ROUNDS = 50  # past this many rounds the summary shows the first and last 20
SUMMARY_WARNINGS = 5


def summary(plan: Plan, title: str = "") -> str:
    """A line a round — clients present, clients with a task, arrivals, classes new and
    revisited, classes seen — and the totals: the plan at any number of clients."""
    header = ["round", "present", "busy", "arrivals", "classes", "revisits", "new", "seen"]
    rows, seen = [], 0
    for r in range(1, plan.rounds + 1):
        arrivals = plan.arrivals_at(r)
        now = len(plan.classes_seen(r))
        present = sum(plan.is_present(r, c) for c in range(plan.clients))
        rows.append([str(r), str(present), str(len({a.client for a in arrivals})), str(len(arrivals)),
                     str(sum(len(a.classes) for a in arrivals)), str(sum(len(a.revisits) for a in arrivals)),
                     str(now - seen), str(now)])
        seen = now
    busy = len({a.client for a in plan.arrivals})
    total = ["total", "", str(busy), str(len(plan.arrivals)), str(sum(len(a.classes) for a in plan.arrivals)),
             str(sum(len(a.revisits) for a in plan.arrivals)), str(seen), str(seen)]
    widths = [max(len(row[i]) for row in [header, *rows, total]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(v.rjust(w) for v, w in zip(row, widths)).rstrip()

    shown = [line(row) for row in rows]
    if len(rows) > SUMMARY_ROUNDS:
        shown = [*shown[:20], f"... {len(rows) - 40} rounds ...", *shown[-20:]]
    per_client = [sum(len(a.classes) for a in plan.arrivals if a.client == c) for c in range(plan.clients)]
    samples = sum(len(a.sample_index) for a in plan.arrivals)
    out = [title] if title else []
    out += [line(header), *shown, line(["-" * w for w in widths]), line(total), ""]
    out.append(f"{len(plan.arrivals)} arrivals, {seen} classes, {samples} training samples, "
               f"{sum(len(v) for v in plan.test_samples.values())} test samples; {busy} of {plan.clients} clients "
               f"get a task, classes a client: {min(per_client)} to {max(per_client)}")
    out.append("present: clients in the round; busy: clients with a task; --clients prints the full grid")
    out += [f"warning: {w}" for w in plan.warnings[:SUMMARY_WARNINGS]]
    if len(plan.warnings) > SUMMARY_WARNINGS:
        out.append(f"... and {len(plan.warnings) - SUMMARY_WARNINGS} more warnings (--clients prints them all)")
    return "\n".join(out)
