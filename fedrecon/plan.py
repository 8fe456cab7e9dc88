"""The arrival plan: which client learns which classes, from which samples, in which round.

Everything random here (class order, samples, split, arrival times, dropout, sampling,
revisits) comes from ``scenario.seed``; each concern draws from its own stream, so that
changing, say, the dropout leaves the class deal as it was.

Several tasks due to one client in one round (a client back from an absence, two
Poisson arrivals in one round, a revisit) are merged into ONE :class:`Arrival`: the
server sends a client at most one message a round, and the client learns all of it
then ("learns it when it returns").
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fedrecon.scenario import Scenario, ScenarioError, SourceMap, per_client, source_of

# Seed streams: np.random.default_rng([seed, STREAM, ...]). The class order and the
# samples of the drawn classes use default_rng(seed) alone, as the first plans did.
_SAMPLES, _SPLIT, _POISSON, _PRESENCE, _REVISITS, _TEST = 1, 2, 3, 4, 5, 6
# Without ``rounds``, a client that keeps dropping out is waited for at most this long.
_MAX_WAIT = 10_000


@dataclass(frozen=True)
class Arrival:
    """A task reaching a client: its classes and the training samples of each.

    ``samples[i]`` are dataset sample indices of class ``classes[i]``; ``task`` counts the
    client's arrivals from 0; ``revisits`` are the classes of ``classes`` that arrive a
    second time (with new samples).
    """

    round: int
    client: int
    task: int
    classes: tuple[int, ...]
    samples: tuple[tuple[int, ...], ...]
    revisits: tuple[int, ...] = ()

    @property
    def sample_index(self) -> np.ndarray:
        return np.array([s for group in self.samples for s in group], dtype=np.int64)

    @property
    def sample_labels(self) -> np.ndarray:
        return np.repeat(np.array(self.classes, dtype=np.int64), [len(g) for g in self.samples])


@dataclass(frozen=True)
class Plan:
    """The whole run, decided before it starts.

    ``present[r - 1]`` are the clients present (joined, not left, not dropped out) and
    sampled in round ``r``; every arrival lands in such a round.
    """

    rounds: int
    clients: int
    arrivals: tuple[Arrival, ...]
    test_samples: dict[int, tuple[int, ...]] = field(repr=False)
    present: tuple[frozenset[int], ...] = field(default=(), repr=False)
    warnings: tuple[str, ...] = ()

    def arrivals_at(self, round: int) -> list[Arrival]:
        return [a for a in self.arrivals if a.round == round]

    def is_present(self, round: int, client: int) -> bool:
        return not self.present or client in self.present[round - 1]

    def classes_seen(self, round: int) -> np.ndarray:
        """Sorted ids of the classes that arrived at any client by the end of ``round``."""
        seen = {c for a in self.arrivals if a.round <= round for c in a.classes}
        return np.array(sorted(seen), dtype=np.int64)

    def at_one_site(self) -> "Plan":
        """The same arrivals, all at one site (client 0): each round's tasks of every
        client become one task there. The ``centralized`` baseline: one site holding all
        training data of the classes seen so far."""
        arrivals = []
        for r in range(1, self.rounds + 1):
            due = self.arrivals_at(r)
            if due:
                arrivals.append(replace(merge_arrivals(due, r), client=0, task=len(arrivals)))
        present = tuple(frozenset({0}) for _ in range(self.rounds))
        return replace(self, clients=1, arrivals=tuple(arrivals), present=present)

    def test_set(self, classes: np.ndarray, part: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Sample indices and labels of the test samples of ``classes`` (``part`` of each class's)."""
        index = [np.array(self.test_samples[int(c)][part], dtype=np.int64) for c in classes]
        labels = [np.full(len(i), c, dtype=np.int64) for i, c in zip(index, classes)]
        if not index:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(index), np.concatenate(labels)


def merge_arrivals(parts: list[Arrival], server_round: int) -> Arrival:
    """One arrival holding every class and sample of ``parts`` (client and task of the
    first and last part).

    A class present in several parts keeps all their samples: its counts and sums then
    cover all of them, exactly as if the parts had arrived apart.
    """
    if len(parts) == 1:
        return parts[0]
    samples: dict[int, list[int]] = {}
    revisits: set[int] = set()
    for part in parts:
        for cls, group in zip(part.classes, part.samples):
            samples.setdefault(cls, []).extend(group)
        revisits.update(part.revisits)
    classes = tuple(sorted(samples))
    return Arrival(
        round=server_round,
        client=parts[0].client,
        task=max(p.task for p in parts),
        classes=classes,
        samples=tuple(tuple(samples[c]) for c in classes),
        revisits=tuple(sorted(revisits)),
    )


@dataclass
class _Item:
    """One class of a task: how many training samples it brings, and the key to blame."""

    cls: int
    shots: int
    blame: tuple
    revisit: bool = False


Task = list[_Item]


@dataclass
class _Due:
    client: int
    round: int
    items: Task


class _Data:
    """What the plan needs from the dataset, plus the seeded sample order of each class.

    With ``test_indices`` (a dataset with an official test split) ``class_indices`` are
    the training candidates and test samples come from ``test_indices`` only.
    """

    def __init__(self, scenario: Scenario, class_indices: list[np.ndarray], groups: Sequence[str] | None,
                 test_indices: list[np.ndarray] | None = None):
        self.scenario = scenario
        self.class_indices = class_indices
        self.test_indices = test_indices
        # Training samples start after the test samples, unless those are a split of their own.
        self.first_train = 0 if test_indices is not None else (scenario.tasks.test_shots or 0)
        self.groups = tuple(groups) if groups is not None else None
        rng = np.random.default_rng(scenario.seed)
        drawn = scenario.tasks.num_classes or 0
        self.order = rng.permutation(len(class_indices))[:drawn]
        self.shuffled = {int(c): rng.permutation(class_indices[c]) for c in self.order}
        self.cursor: dict[int, int] = {}

    def split_rng(self) -> np.random.Generator:
        return np.random.default_rng([self.scenario.seed, _SPLIT])

    def group_names(self) -> list[str]:
        return list(dict.fromkeys(self.groups or ()))

    def classes_of(self, group: str) -> list[int]:
        return [c for c, g in enumerate(self.groups or ()) if g == group]

    def samples_of(self, cls: int) -> np.ndarray:
        if cls not in self.shuffled:
            rng = np.random.default_rng([self.scenario.seed, _SAMPLES, cls])
            self.shuffled[cls] = rng.permutation(self.class_indices[cls])
        return self.shuffled[cls]

    def shots(self, cls: int) -> int:
        """Training samples of a class per arrival: ``train_shots``, or all it has when null."""
        t = self.scenario.tasks
        return t.train_shots if t.train_shots is not None else len(self.class_indices[cls]) - self.first_train

    def test(self, cls: int) -> tuple[int, ...]:
        shots = self.scenario.tasks.test_shots
        if self.test_indices is None:
            return tuple(int(i) for i in self.samples_of(cls)[:shots])
        chosen = np.random.default_rng([self.scenario.seed, _TEST, cls]).permutation(self.test_indices[cls])
        return tuple(int(i) for i in chosen[:shots])

    def take(self, cls: int, shots: int) -> tuple[int, ...] | None:
        """The next ``shots`` unused training samples of ``cls``; None when too few are left.

        The first ``test_shots`` samples are the test samples: the cursor starts after
        them, so a training sample is never a test sample and never used twice.
        """
        start = self.cursor.get(cls, self.first_train)
        samples = self.samples_of(cls)
        if start + shots > len(samples):
            return None
        self.cursor[cls] = start + shots
        return tuple(int(i) for i in samples[start : start + shots])


# --- splits: client -> its tasks, in the order they arrive ------------------------------------

def _chunks(seq: Sequence, size: int) -> list:
    return [list(seq[i : i + size]) for i in range(0, len(seq), size)]


def _deal(tasks: list[Task], count: int) -> list[list[Task]]:
    """Task ``j`` to client ``j % count``."""
    out: list[list[Task]] = [[] for _ in range(count)]
    for j, task in enumerate(tasks):
        out[j % count].append(task)
    return out


def _even_shares(total: int, holders: Sequence[int]) -> dict[int, int]:
    """``total`` samples divided between ``holders``: the first ones get one more."""
    base, extra = divmod(total, len(holders))
    return {h: base + (k < extra) for k, h in enumerate(sorted(holders))}


def _pools_to_tasks(pools: list[list[int]], shares: dict[tuple[int, int], int], size: int) -> list[list[Task]]:
    blame = ("tasks", "train_shots")
    return [[[_Item(c, shares[c, client], blame) for c in chunk] for chunk in _chunks(pool, size)] for client, pool in enumerate(pools)]


def _split_disjoint(s: Scenario, data: _Data) -> list[list[Task]]:
    t = s.tasks
    tasks = [[_Item(int(c), data.shots(int(c)), ("tasks", "train_shots")) for c in chunk] for chunk in _chunks(data.order, t.classes_per_task)]
    return _deal(tasks, s.clients.count)


def _split_overlap(s: Scenario, data: _Data) -> list[list[Task]]:
    t, n = s.tasks, s.clients.count
    rng = data.split_rng()
    n_shared = round(t.split.shared * t.num_classes)
    own, shared = data.order[: len(data.order) - n_shared], data.order[len(data.order) - n_shared :]
    pools: list[list[int]] = [[] for _ in range(n)]
    shares: dict[tuple[int, int], int] = {}
    for j, chunk in enumerate(_chunks(own, t.classes_per_task)):
        for c in chunk:
            pools[j % n].append(int(c))
            shares[int(c), j % n] = data.shots(int(c))
    among = t.split.among or n
    for c in shared:
        holders = sorted(int(h) for h in rng.choice(n, size=among, replace=False))
        for h, k in _even_shares(data.shots(int(c)), holders).items():
            pools[h].append(int(c))
            shares[int(c), h] = k
    # Shared classes are spread over a client's tasks, not all at its end.
    pools = [[int(c) for c in rng.permutation(pool)] for pool in pools]
    return _pools_to_tasks(pools, shares, t.classes_per_task)


def _split_dirichlet(s: Scenario, data: _Data) -> list[list[Task]]:
    t, n = s.tasks, s.clients.count
    rng = data.split_rng()
    pools: list[list[int]] = [[] for _ in range(n)]
    shares: dict[tuple[int, int], int] = {}
    for c in data.order:
        p = np.nan_to_num(rng.dirichlet(np.full(n, t.split.alpha)))
        if p.sum() <= 0:  # tiny alpha can underflow to all zeros: the class goes to one client
            p = np.eye(n)[rng.integers(n)]
        counts = rng.multinomial(data.shots(int(c)), p / p.sum())
        for h in np.flatnonzero(counts):
            pools[h].append(int(c))
            shares[int(c), int(h)] = int(counts[h])
    return _pools_to_tasks(pools, shares, t.classes_per_task)


def _split_explicit(s: Scenario, data: _Data) -> list[list[Task]]:
    t = s.tasks
    holders: dict[int, list[int]] = {}
    for client, classes in enumerate(t.split.clients):
        for c in classes:
            holders.setdefault(c, []).append(client)
    shares = {(c, h): k for c, hs in holders.items() for h, k in _even_shares(data.shots(c), hs).items()}
    return _pools_to_tasks([list(classes) for classes in t.split.clients], shares, t.classes_per_task)


def _chosen_groups(s: Scenario, data: _Data) -> list[str]:
    choice = s.tasks.split.groups
    if isinstance(choice, list):
        return choice
    names = data.group_names()
    return [names[i] for i in data.split_rng().permutation(len(names))[:choice]]


def _split_group(s: Scenario, data: _Data) -> list[list[Task]]:
    t = s.tasks
    tasks = []
    for chunk in _chunks(_chosen_groups(s, data), t.split.groups_per_task):
        tasks.append([_Item(c, data.shots(c), ("tasks", "train_shots")) for g in chunk for c in data.classes_of(g)])
    return _deal(tasks, s.clients.count)


SPLITS: dict[str, Callable[[Scenario, _Data], list[list[Task]]]] = {
    "disjoint": _split_disjoint,
    "overlap": _split_overlap,
    "dirichlet": _split_dirichlet,
    "explicit": _split_explicit,
    "group": _split_group,
}


# --- arrival: the round each task is due (before absences move it) ------------------------------------

def _arrive_synchronous(s: Scenario, tasks: list[list[Task]], data: _Data) -> list[_Due]:
    every = s.tasks.arrival.every
    return [_Due(c, 1 + k * every, task) for c, own in enumerate(tasks) for k, task in enumerate(own)]


def _arrive_staggered(s: Scenario, tasks: list[list[Task]], data: _Data) -> list[_Due]:
    a = s.tasks.arrival
    offsets = a.offset if isinstance(a.offset, list) else [c * a.offset for c in range(s.clients.count)]
    return [_Due(c, 1 + offsets[c] + k * a.every, task) for c, own in enumerate(tasks) for k, task in enumerate(own)]


def _arrive_poisson(s: Scenario, tasks: list[list[Task]], data: _Data) -> list[_Due]:
    rates = per_client(s.tasks.arrival.rate, s.clients.count)
    dues = []
    for c, own in enumerate(tasks):
        rng = np.random.default_rng([s.seed, _POISSON, c])
        times = np.cumsum(rng.exponential(1.0 / rates[c], size=len(own)))
        dues += [_Due(c, max(1, math.ceil(tm)), task) for tm, task in zip(times, own)]
    return dues


def _arrive_explicit(s: Scenario, tasks: list[list[Task]], data: _Data) -> list[_Due]:
    """Events name their classes, groups or a count; a bare event is the next task."""
    t = s.tasks
    dues, problems = [], []
    for client, events in sorted(t.arrival.clients.items()):
        flat = [item for task in tasks[client] for item in task]
        ends = np.cumsum([len(task) for task in tasks[client]]).tolist()
        cursor = 0
        for k, ev in enumerate(events):
            here = ("tasks", "arrival", "clients", client, k)
            if ev.classes is not None:
                items = [_Item(c, data.shots(c), here + ("classes",)) for c in ev.classes]
            elif ev.groups is not None:
                items = [_Item(c, data.shots(c), here + ("groups",)) for g in ev.groups for c in data.classes_of(g)]
            else:
                stop = cursor + ev.count if ev.count is not None else next((e for e in ends if e > cursor), cursor + 1)
                if stop > len(flat):
                    problems.append(source_of(s).error(
                        here, f"client {client} holds {len(flat)} classes of the split; the events up to this one ask for {stop}"))
                    continue
                items, cursor = flat[cursor:stop], stop
            dues.append(_Due(client, ev.round, items))
    if problems:
        raise ScenarioError(problems)
    return dues


ARRIVALS: dict[str, Callable[[Scenario, list[list[Task]], _Data], list[_Due]]] = {
    "synchronous": _arrive_synchronous,
    "staggered": _arrive_staggered,
    "poisson": _arrive_poisson,
    "explicit": _arrive_explicit,
}


# --- who is there ---------------------------------------------------------------------------------

class _Presence:
    """Clients present and sampled in each round; round ``r`` draws from its own stream,
    so the answer does not depend on how many rounds are looked at."""

    def __init__(self, s: Scenario):
        n = s.clients.count
        self.seed, self.count, self.fraction = s.seed, n, s.clients.fraction
        self.join = per_client(s.clients.join, n)
        self.leave = [lv if lv is not None else math.inf for lv in per_client(s.clients.leave, n)]
        self.dropout = np.array(per_client(s.clients.dropout, n), dtype=float)
        self._cache: dict[int, frozenset[int]] = {}

    def at(self, r: int) -> frozenset[int]:
        if r not in self._cache:
            rng = np.random.default_rng([self.seed, _PRESENCE, r])
            away = rng.random(self.count) < self.dropout
            here = [c for c in range(self.count) if self.join[c] <= r < self.leave[c] and not away[c]]
            if self.fraction < 1.0 and here:
                k = max(1, math.ceil(self.fraction * len(here)))
                here = sorted(int(c) for c in rng.choice(here, size=k, replace=False))
            self._cache[r] = frozenset(here)
        return self._cache[r]

    def next(self, client: int, r: int, last: int | None) -> int | None:
        """First round from ``r`` the client is there, up to ``last`` (or its leaving)."""
        stop = min(last if last is not None else r + _MAX_WAIT, self.leave[client] - 1)
        return next((x for x in range(max(r, 1), int(stop) + 1) if client in self.at(x)), None)


# --- the plan ---------------------------------------------------------------------------------------

def _dataset_checks(s: Scenario, data: _Data, source: SourceMap) -> list[str]:
    """Everything the dataset can contradict, all at once."""
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
            f"train_shots + test_shots = {t.train_shots + t.test_shots}, but some classes have only {smallest} samples",
        ))
    elif t.revisits is not None and t.train_shots + t.test_shots + t.revisits.shots > smallest:
        problems.append(source.error(
            ("tasks", "revisits", "shots"),
            f"train_shots + test_shots + revisits.shots = {t.train_shots + t.test_shots + t.revisits.shots}, "
            f"but some classes have only {smallest} samples (a revisit brings unused samples)",
        ))

    if t.revisits is not None and t.train_shots is None:
        problems.append(source.error(("tasks", "revisits"), "train_shots null uses every training sample at the first arrival; "
                                     "a revisit needs unused ones: give train_shots a number"))

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


def _split_checks(s: Scenario, data: _Data, source: SourceMap, smallest: int) -> list[str]:
    """Shot counts against a dataset with an official test split."""
    t, problems = s.tasks, []
    fewest_test = min((len(i) for i in data.test_indices), default=0)
    if t.train_shots is not None and t.train_shots + (t.revisits.shots if t.revisits else 0) > smallest:
        loc = ("tasks", "revisits", "shots") if t.revisits and t.train_shots <= smallest else ("tasks", "train_shots")
        problems.append(source.error(loc, f"some classes have only {smallest} training samples in the official train split"))
    if t.test_shots is not None and t.test_shots > fewest_test:
        problems.append(source.error(("tasks", "test_shots"), f"{t.test_shots} test samples per class, but some classes have only "
                                     f"{fewest_test} in the official test split (null: all of them)"))
    return problems


def make_plan(scenario: Scenario, class_indices: list[np.ndarray], groups: Sequence[str] | None = None,
              test_indices: list[np.ndarray] | None = None) -> Plan:
    """Deal classes to clients, tasks to rounds and samples to train and test, all from
    ``scenario.seed``; raise :class:`ScenarioError` with every problem the data reveals.

    ``class_indices[c]`` are the dataset sample indices of class ``c`` and ``groups[c]``
    its group. The first ``test_shots`` of each class's shuffled samples are its test
    samples; training samples are taken after them, each at most once. A dataset with
    an official test split passes ``test_indices[c]``, its test samples of class ``c``:
    then test samples are drawn from those only (all of them when ``test_shots`` is
    null) and ``class_indices`` are the training candidates.
    """
    s, source = scenario, source_of(scenario)
    data = _Data(s, class_indices, groups, test_indices)
    problems = _dataset_checks(s, data, source)
    if problems:
        raise ScenarioError(problems)

    tasks = SPLITS[s.tasks.split.kind](s, data)
    dues = ARRIVALS[s.tasks.arrival.kind](s, tasks, data)
    presence = _Presence(s)
    warnings: list[str] = []

    late = [d for d in dues if s.rounds is not None and d.round > s.rounds and d.round < presence.leave[d.client]]
    if late:
        worst = max(late, key=lambda d: d.round)
        loc = ("tasks", "arrival", "rate") if s.tasks.arrival.kind == "poisson" else ("rounds",)
        raise ScenarioError([source.error(loc, f"{s.rounds} rounds, but {len(late)} task(s) are due later (client {worst.client} in round {worst.round})")])

    placed: dict[tuple[int, int], list[_Item]] = {}
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
    if not placed:
        raise ScenarioError([source.error(("tasks",), "no task ever arrives: check clients.join, clients.leave and the arrival rounds")])
    rounds = s.rounds if s.rounds is not None else max(r for r, _ in placed)

    if s.tasks.revisits is not None:
        warnings += _place_revisits(s, placed, presence, rounds)

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
    return Plan(rounds, s.clients.count, tuple(arrivals), test, present, tuple(warnings))


def _place_revisits(s: Scenario, placed: dict[tuple[int, int], list[_Item]], presence: _Presence, rounds: int) -> list[str]:
    """Give a seeded fraction of the arrived classes a second arrival with new samples."""
    rv, n = s.tasks.revisits, s.clients.count
    rng = np.random.default_rng([s.seed, _REVISITS])
    # A revisit comes after the class's last regular arrival anywhere, so it is never
    # merged with one and always brings the class back to the federation.
    last: dict[int, int] = {}
    holders: dict[int, set[int]] = {}
    for (r, client), items in sorted(placed.items()):
        for item in items:
            last[item.cls] = r
            holders.setdefault(item.cls, set()).add(client)
    classes = sorted(last)
    k = max(1, round(rv.fraction * len(classes)))
    chosen = sorted(int(c) for c in rng.choice(classes, size=k, replace=False))
    skipped = 0
    for c in chosen:
        targets = {
            "same": sorted(holders[c]),
            "other": [x for x in range(n) if x not in holders[c]],
            "any": list(range(n)),
        }[rv.to]
        start = last[c] + rv.after
        if not targets or start > rounds:
            skipped += 1
            continue
        target = int(rng.choice(targets))
        r = presence.next(target, int(rng.integers(start, rounds + 1)), rounds)
        if r is None:
            skipped += 1
            continue
        placed.setdefault((r, target), []).append(_Item(c, rv.shots, ("tasks", "revisits", "shots"), revisit=True))
    if skipped:
        return [f"revisits: {skipped} of {len(chosen)} chosen classes have no later round with a target client present"]
    return []


def _sample(s: Scenario, data: _Data, placed: dict[tuple[int, int], list[_Item]], source: SourceMap) -> tuple[list[Arrival], dict]:
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


# --- the timeline, as ``fedrecon plan`` prints it -----------------------------------------------------

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
