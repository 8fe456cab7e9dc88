"""Making a plan: checks against the data, then split, arrival, presence, revisits, samples."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import numpy as np

from fedrecon.plan.arrivals import PROCESSES, Presence
from fedrecon.plan.edges import only_edge
from fedrecon.plan.records import Arrival, Plan
from fedrecon.plan.samples import REVISITS, Item, Samples
from fedrecon.plan.splits import SPLITS
from fedrecon.scenario.errors import ScenarioError, SourceMap, source_of
from fedrecon.scenario.scenario import Scenario


def _dataset_checks(s: Scenario, data: Samples, source: SourceMap) -> list[str]:
    """Everything the dataset can contradict, all at once (what the scenario alone rules
    out is refused when it is read: fedrecon.scenario.checks)."""
    t, n_classes = s.tasks, len(data.class_indices)
    problems: list[str] = []
    if t.num_classes is not None and t.num_classes > n_classes:
        problems.append(source.error(("tasks", "num_classes"), f"{t.num_classes} classes requested, the dataset has {n_classes}"))
    smallest = min((len(i) for i in data.class_indices), default=0)
    if data.test_indices is not None:
        problems += _split_checks(s, data, source, smallest)
    elif t.test_shots is None:
        problems.append(source.error(("tasks", "test_shots"), "null (every official test sample) needs a dataset with a test split; "
                                     f"dataset {s.data.dataset} has none: give a number"))
    elif t.train_shots is None:
        if t.test_shots >= smallest:
            problems.append(source.error(("tasks", "test_shots"), f"{t.test_shots} test samples leave no training sample in "
                                         f"classes of {smallest} samples"))
    elif t.train_shots + t.test_shots > smallest:
        problems.append(source.error(
            ("tasks", "train_shots"),
            f"train_shots + test_shots = {t.train_shots + t.test_shots}, but "
            f"{_fewer(data, data.class_indices, t.train_shots + t.test_shots, ' samples')}; "
            f"allowed: at most {smallest - t.test_shots} with test_shots {t.test_shots}",
        ))
    elif t.revisits is not None and t.train_shots + t.test_shots + t.revisits.shots > smallest:
        problems.append(source.error(
            ("tasks", "revisits", "shots"),
            f"train_shots + test_shots + revisits.shots = {t.train_shots + t.test_shots + t.revisits.shots}, "
            f"but {_fewer(data, data.class_indices, t.train_shots + t.test_shots + t.revisits.shots, ' samples')} "
            f"(a revisit brings unused samples); allowed: at most {smallest - t.train_shots - t.test_shots}",
        ))

    def check_ids(loc: tuple, ids: list[int]) -> None:
        for k, c in enumerate(ids):
            if c >= n_classes:
                problems.append(source.error(loc + (k,), f"class {c} does not exist; the dataset's classes are 0..{n_classes - 1}"))

    names = data.group_names()

    def check_groups(loc: tuple, chosen: list[str]) -> None:
        for k, g in enumerate(chosen):
            if g not in names:
                hint = difflib.get_close_matches(g, names, n=1)
                shown = f"did you mean '{hint[0]}'? " if hint else ""
                problems.append(source.error(loc + (k,), f"no group {g!r}; {shown}groups: {', '.join(names) or 'none'}"))

    if t.split.kind == "explicit":
        for i, ids in enumerate(t.split.clients):
            check_ids(("tasks", "split", "clients", i), ids)
    if t.split.kind == "group":
        if isinstance(t.split.groups, list):
            check_groups(("tasks", "split", "groups"), t.split.groups)
        elif t.split.groups > len(names):
            problems.append(source.error(("tasks", "split", "groups"), f"{t.split.groups} groups requested, the dataset has {len(names)}"))
    if t.arrival.kind == "explicit":
        for client, events in t.arrival.clients.items():
            for k, ev in enumerate(events):
                here = ("tasks", "arrival", "clients", client, k)
                check_ids(here + ("classes",), ev.classes or [])
                check_groups(here + ("groups",), ev.groups or [])
    return problems


def _fewer(data: Samples, indices: list[np.ndarray], needed: int, where: str = "") -> str:
    """"N classes have fewer <where>: <the classes, with their counts>" for an error line
    ("every class has N" when all are short by the same count: a list would be noise)."""
    counts = [len(i) for i in indices]
    short = sorted((c for c, n in enumerate(counts) if n < needed), key=lambda c: (counts[c], c))
    if len(short) == len(counts) and len(set(counts)) == 1:
        return f"every class has {counts[0]}{where}"
    return f"{len(short)} {'class has' if len(short) == 1 else 'classes have'} fewer{where}: {data.named(short, counts)}"


def _split_checks(s: Scenario, data: Samples, source: SourceMap, smallest: int) -> list[str]:
    """Shot counts against a dataset with an official test split: the classes short of
    samples are named, with the most that every class has."""
    t, problems = s.tasks, []
    fewest_test = min((len(i) for i in data.test_indices), default=0)
    wanted = t.train_shots + (t.revisits.shots if t.revisits else 0) if t.train_shots is not None else 0
    if wanted > smallest:
        loc = ("tasks", "revisits", "shots") if t.revisits and t.train_shots <= smallest else ("tasks", "train_shots")
        problems.append(source.error(loc, f"{wanted} training samples per class, but "
                                          f"{_fewer(data, data.class_indices, wanted, ' in the official train split')}; "
                                          f"allowed: at most {smallest} in all"))
    if t.test_shots is not None and t.test_shots > fewest_test:
        problems.append(source.error(("tasks", "test_shots"), f"{t.test_shots} test samples per class, but "
                                     f"{_fewer(data, data.test_indices, t.test_shots, ' in the official test split')}; "
                                     f"allowed: at most {fewest_test}, or null (every test sample of each class)"))
    return problems


def make_plan(scenario: Scenario, class_indices: list[np.ndarray], groups: Sequence[str] | None = None,
              test_indices: list[np.ndarray] | None = None, names: Sequence[str] | None = None) -> Plan:
    """Deal classes to clients, tasks to rounds and samples to train and test, all from
    ``scenario.seed``; raise :class:`ScenarioError` with every problem the data reveals.

    ``class_indices[c]`` are the dataset sample indices of class ``c`` and ``groups[c]``
    its group. The first ``test_shots`` of each class's shuffled samples are its test
    samples; training samples are taken after them, each at most once. A dataset with
    an official test split passes ``test_indices[c]``, its test samples of class ``c``:
    then test samples are drawn from those only (all of them when ``test_shots`` is
    null) and ``class_indices`` are the training candidates. ``names[c]`` (optional)
    names class ``c`` in error lines and warnings.
    """
    s, source = scenario, source_of(scenario)
    data = Samples(s, class_indices, groups, test_indices, names)
    problems = _dataset_checks(s, data, source)
    if problems:
        raise ScenarioError(problems)

    tasks = SPLITS[s.tasks.split.kind](s, data)
    dues = PROCESSES[s.tasks.arrival.kind](s, tasks, data)
    presence = Presence(s)
    warnings: list[str] = []

    # the due rounds come from the split and the arrival draws, made from the data just now
    late = [d for d in dues if s.rounds is not None and d.round > s.rounds and d.round < presence.leave[d.client]]
    if late:
        worst = max(late, key=lambda d: d.round)
        loc = ("tasks", "arrival", "rate") if s.tasks.arrival.kind == "poisson" else ("rounds",)
        raise ScenarioError([source.error(loc, f"{s.rounds} rounds, but {len(late)} task(s) are due later (client {worst.client} in round {worst.round})")])

    placed: dict[tuple[int, int], list[Item]] = {}
    lost: dict[int, int] = {}
    for d in sorted(dues, key=lambda d: (d.client, d.round)):
        r = presence.next(d.client, d.round, s.rounds)
        if r is None:
            lost[d.client] = lost.get(d.client, 0) + 1
            continue
        placed.setdefault((r, d.client), []).extend(d.items)
    for client, k in sorted(lost.items()):
        why = f"it leaves in round {presence.leave[client]}" if presence.leave[client] != math.inf else "it is not present again in time"
        warnings.append(f"client {client}: {k} task(s) never arrive: {why}")
    if not placed:  # joins, leaves and dropouts against the drawn due rounds
        raise ScenarioError([source.error(("tasks",), "no task ever arrives: check clients.join, clients.leave and the arrival rounds")])
    rounds = s.rounds if s.rounds is not None else max(r for r, _ in placed)

    if s.tasks.revisits is not None:
        warnings += _place_revisits(s, placed, presence, rounds, data)

    arrivals, test = _sample(s, data, placed, source)
    if s.tasks.arrival.kind == "explicit":
        held = sum(len(task) for own in tasks for task in own)
        used = sum(len(d.items) for d in dues if not any(i.blame[-1] in ("classes", "groups") for i in d.items))
        if used < held:
            warnings.append(f"{held - used} class holding(s) of the split never arrive: no explicit event asks for them")
    got = {a.client for a in arrivals}
    for c in range(s.clients.count):
        if c not in got:
            warnings.append(f"client {c} never gets data")
    present = tuple(presence.at(r) for r in range(1, rounds + 1))
    plan = Plan(rounds, s.clients.count, tuple(arrivals), test, present, tuple(warnings))
    # one edge's run: the whole plan drawn as above, then only its clients' part of it
    return plan if s.clients.edge is None else only_edge(plan, s.clients.edge, s.clients.edges)


def _place_revisits(s: Scenario, placed: dict[tuple[int, int], list[Item]], presence: Presence, rounds: int,
                    data: Samples) -> list[str]:
    """Give a seeded fraction of the arrived classes a second arrival with new samples;
    a warning names the classes that get none, and the rounds that would give them one."""
    rv, n = s.tasks.revisits, s.clients.count
    rng = np.random.default_rng([s.seed, REVISITS])
    # A revisit comes after the class's last regular arrival anywhere, so it is never
    # merged with one and always brings the class back to the federation.
    last: dict[int, int] = {}
    holders: dict[int, set[int]] = {}
    for (r, client), items in sorted(placed.items()):
        for item in items:
            last[item.cls] = r
            holders.setdefault(item.cls, set()).add(client)
    classes = sorted(last)
    if rv.per_client is None:
        k = max(1, round(rv.fraction * len(classes)))
        chosen = sorted(int(c) for c in rng.choice(classes, size=k, replace=False))
    else:  # client by client, from the classes it held that no client before it chose
        picked: set[int] = set()
        for client in range(n):
            own = [c for c in classes if client in holders[c] and c not in picked]
            if own:
                picked.update(int(c) for c in rng.choice(own, size=min(rv.per_client, len(own)), replace=False))
        chosen = sorted(picked)
    skipped: dict[int, list[int]] = {}  # a class that gets no revisit: its targets
    for c in chosen:
        targets = {
            "same": sorted(holders[c]),
            "other": [x for x in range(n) if x not in holders[c]],
            "any": list(range(n)),
        }[rv.to]
        start = last[c] + rv.after
        if not targets or start > rounds:
            skipped[c] = targets
            continue
        target = int(rng.choice(targets))
        r = presence.next(target, int(rng.integers(start, rounds + 1)), rounds)
        if r is None:
            skipped[c] = [target]
            continue
        placed.setdefault((r, target), []).append(Item(c, rv.shots, ("tasks", "revisits", "shots"), revisit=True))
    if not skipped:
        return []
    line = (f"revisits: {len(skipped)} of {len(chosen)} chosen classes have no later round with a target client present: "
            f"{data.named(sorted(skipped))}")
    # the first round from which a target of each is there; more rounds change the drawn
    # revisit rounds, so this is the least that leaves each class one, not a promise
    firsts = [min((x for x in (presence.next(t, last[c] + rv.after, None) for t in targets) if x is not None), default=None)
              for c, targets in skipped.items()]
    if not all(firsts):
        return [f"{line}; no client they may go to ({rv.to}) is there after them: try revisits.to: any"]
    return [f"{line}; rounds: {max(firsts)} (now {rounds}) leaves each of them a round to come back in"]


def _sample(s: Scenario, data: Samples, placed: dict[tuple[int, int], list[Item]], source: SourceMap) -> tuple[list[Arrival], dict]:
    """Training samples for each placed item, in round order; one Arrival per (round, client)."""
    arrivals, problems = [], {}
    learned: dict[int, set[int]] = {}
    tasks_so_far: dict[int, int] = {}
    for (r, client), items in sorted(placed.items()):
        samples: dict[int, list[int]] = {}
        again: list[int] = []
        for item in items:
            got = data.take(item.cls, item.shots)
            if got is None:
                problems.setdefault(item.blame, source.error(
                    item.blame, f"class {item.cls} runs out of samples ({len(data.samples_of(item.cls))}, "
                    f"{s.tasks.test_shots} of them for test): it arrives too often"))
                continue
            # Explicit events may name a class the client had: that is a revisit too.
            named_again = item.blame[-1] in ("classes", "groups") and item.cls in learned.get(client, set())
            if (item.revisit or named_again) and item.cls not in again:
                again.append(item.cls)
            samples.setdefault(item.cls, []).extend(got)
        learned.setdefault(client, set()).update(samples)
        task = tasks_so_far.get(client, 0)
        tasks_so_far[client] = task + 1
        arrivals.append(Arrival(r, client, task, tuple(samples), tuple(tuple(v) for v in samples.values()), tuple(again)))
    if problems:
        raise ScenarioError(list(problems.values()))
    classes = sorted({int(c) for c in data.order} | {c for a in arrivals for c in a.classes})
    return arrivals, {c: data.test(c) for c in classes}
