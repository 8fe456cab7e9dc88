"""The plan: same seed same plan, the old deal kept, and properties over random scenarios."""

from __future__ import annotations

from collections import Counter

import numpy as np
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecon.plan import make_plan, timeline
from fedrecon.plan.samples import Samples
from fedrecon.plan.splits import SPLITS
from fedrecon.scenario import ScenarioError, parse_scenario
from fedrecon.scenario.base import per_client

N_CLASSES, PER_CLASS, N_GROUPS = 40, 20, 8
# Samples of a class are spread over the dataset, as they would be after any shuffle.
LABELS = np.arange(N_CLASSES * PER_CLASS) % N_CLASSES
CLASS_INDICES = [np.flatnonzero(LABELS == c) for c in range(N_CLASSES)]
GROUPS = tuple(f"g{c % N_GROUPS}" for c in range(N_CLASSES))


def plan_of(raw: dict):
    scenario = parse_scenario(yaml.safe_dump(raw), "random.yaml")
    return scenario, make_plan(scenario, CLASS_INDICES, GROUPS)


def test_disjoint_synchronous_deal_is_the_original_one():
    """Seeded class permutation, task j to client j % count, per class test then train."""
    raw = {"name": "x", "seed": 3, "clients": {"count": 3},
           "tasks": {"num_classes": 14, "classes_per_task": 4, "train_shots": 6, "test_shots": 5}}
    _, plan = plan_of(raw)
    rng = np.random.default_rng(3)
    order = rng.permutation(N_CLASSES)[:14]
    shuffled = {int(c): rng.permutation(CLASS_INDICES[c]) for c in order}
    expected = []
    for j, start in enumerate(range(0, 14, 4)):
        classes = tuple(int(c) for c in order[start : start + 4])
        samples = tuple(tuple(int(i) for i in shuffled[c][5:11]) for c in classes)
        expected.append((1 + j // 3, j % 3, j // 3, classes, samples))
    got = [(a.round, a.client, a.task, a.classes, a.samples) for a in plan.arrivals]
    assert sorted(got) == sorted(expected)
    assert plan.test_samples == {c: tuple(int(i) for i in s[:5]) for c, s in shuffled.items()}


@st.composite
def scenarios(draw) -> dict:
    count = draw(st.integers(1, 5))
    test_shots = draw(st.integers(1, 5))
    train_shots = draw(st.integers(5, 10))
    num_classes = draw(st.integers(5, 30))
    cpt = draw(st.integers(1, 6))
    kinds = ["disjoint", "explicit", "group"] + (["overlap", "dirichlet"] if count > 1 else [])
    kind = draw(st.sampled_from(kinds))
    tasks: dict = {"train_shots": train_shots, "test_shots": test_shots}
    if kind in ("disjoint", "overlap", "dirichlet"):
        tasks.update(num_classes=num_classes, classes_per_task=min(cpt, num_classes))
    if kind == "explicit":
        tasks["classes_per_task"] = cpt
    split = {"kind": kind}
    if kind == "overlap":
        split.update(shared=draw(st.floats(0.2, 1.0)), among=draw(st.sampled_from([None, *range(2, count + 1)])))
    if kind == "dirichlet":
        split["alpha"] = draw(st.sampled_from([0.05, 0.5, 5.0]))
    if kind == "explicit":
        split["clients"] = [draw(st.lists(st.integers(0, N_CLASSES - 1), max_size=8, unique=True)) for _ in range(count)]
    if kind == "group":
        split["groups"] = draw(st.integers(1, N_GROUPS))
        split["groups_per_task"] = draw(st.integers(1, 2))
    tasks["split"] = split
    arrival = draw(st.sampled_from(["synchronous", "staggered", "poisson", "explicit"]))
    if arrival == "synchronous":
        tasks["arrival"] = {"kind": arrival, "every": draw(st.integers(1, 2))}
    elif arrival == "staggered":
        tasks["arrival"] = {"kind": arrival, "offset": draw(st.integers(0, 2))}
    elif arrival == "poisson":
        tasks["arrival"] = {"kind": arrival, "rate": draw(st.lists(st.floats(0.3, 2.0), min_size=count, max_size=count))}
    else:
        events = {c: [{"round": r} for r in sorted(draw(st.lists(st.integers(1, 8), max_size=3)))] for c in range(count)}
        tasks["arrival"] = {"kind": arrival, "clients": events}
    spare = PER_CLASS - train_shots - test_shots
    if spare >= 1 and draw(st.booleans()):
        tasks["revisits"] = {"fraction": draw(st.floats(0.1, 1.0)), "shots": draw(st.integers(1, spare)),
                             "to": draw(st.sampled_from(["same", "any"] + (["other"] if count > 1 else []))),
                             "after": draw(st.integers(1, 2))}
    join = draw(st.lists(st.integers(1, 4), min_size=count, max_size=count))
    leave = [draw(st.sampled_from([None, j + draw(st.integers(1, 6))])) for j in join]
    clients = {"count": count, "join": join, "leave": leave, "dropout": draw(st.sampled_from([0.0, 0.2, 0.5])),
               "fraction": draw(st.sampled_from([1.0, 0.6, 0.3]))}
    return {"name": "random", "seed": draw(st.integers(0, 2**16)), "clients": clients, "tasks": tasks}


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_plan_properties(raw):
    try:
        scenario, plan = plan_of(raw)
    except ScenarioError as exc:
        # Only "nothing ever arrives" (everyone away or nothing dealt) may refuse a valid scenario.
        assert all("no task ever arrives" in p or "holds" in p for p in exc.problems), exc.problems
        return
    # Same seed, same plan.
    assert plan == make_plan(scenario, CLASS_INDICES, GROUPS)

    train = [(int(s), c) for a in plan.arrivals for c, group in zip(a.classes, a.samples) for s in group]
    samples = [s for s, _ in train]
    # No training sample is used twice (revisits bring new ones) and each is of its class.
    assert len(samples) == len(set(samples))
    assert all(LABELS[s] == c for s, c in train)
    # Test samples are never training samples, and are of their class.
    test = {int(s) for c, group in plan.test_samples.items() for s in group}
    assert not test & set(samples)
    assert all(LABELS[s] == c and len(g) == scenario.tasks.test_shots for c, g in plan.test_samples.items() for s in g)

    # Every arrival lands in a round its client is there (joined, not left, sampled); one a round.
    join, leave = per_client(scenario.clients.join, plan.clients), per_client(scenario.clients.leave, plan.clients)
    keys = [(a.round, a.client) for a in plan.arrivals]
    assert len(keys) == len(set(keys))
    for a in plan.arrivals:
        assert 1 <= a.round <= plan.rounds and plan.is_present(a.round, a.client)
        assert join[a.client] <= a.round and (leave[a.client] is None or a.round < leave[a.client])

    # Each class goes where the split says: regular (not revisit) arrivals are split holdings.
    data = Samples(scenario, CLASS_INDICES, GROUPS)
    holdings = {(item.cls, c): item.shots for c, own in enumerate(SPLITS[scenario.tasks.split.kind](scenario, data))
                for task in own for item in task}
    regular = {(c, a.client): len(g) for a in plan.arrivals for c, g in zip(a.classes, a.samples) if c not in a.revisits}
    assert regular.items() <= holdings.items()
    if scenario.tasks.split.kind in ("disjoint", "group"):
        assert len({c for c, _ in regular}) == len(regular)  # one client per class
    lost = any("never arrive" in w for w in plan.warnings)
    if not lost and scenario.tasks.arrival.kind != "explicit":
        assert regular == holdings
    # A revisit brings exactly revisits.shots new samples.
    if scenario.tasks.revisits is not None:
        for a in plan.arrivals:
            for c, g in zip(a.classes, a.samples):
                if c in a.revisits:
                    assert len(g) == scenario.tasks.revisits.shots


def test_away_client_learns_its_task_when_it_returns():
    raw = {"name": "x", "clients": {"count": 2, "join": [1, 3]},
           "tasks": {"num_classes": 8, "classes_per_task": 2, "train_shots": 5, "test_shots": 5}}
    _, plan = plan_of(raw)
    late = [a for a in plan.arrivals if a.client == 1]
    # Its tasks, due in rounds 1 and 2, reach it merged into one arrival when it joins.
    assert [(a.round, len(a.classes), a.task) for a in late] == [(3, 4, 0)]
    assert plan.rounds == 3 and plan.warnings == ()


def test_client_that_leaves_early_is_warned_about():
    raw = {"name": "x", "clients": {"count": 2, "leave": [None, 2]},
           "tasks": {"num_classes": 8, "classes_per_task": 2, "train_shots": 5, "test_shots": 5}}
    _, plan = plan_of(raw)
    assert plan.warnings == ("client 1: 1 task(s) never arrive: it leaves in round 2",)
    assert "warning: client 1: 1 task(s) never arrive" in timeline(plan)


def test_a_thousand_client_plan_prints_as_a_summary_and_the_grid_on_request(capsys):
    from server.cli import main

    thousand = ["--set", "clients.count=1000", "--set", "tasks.num_classes=600", "--set", "tasks.classes_per_task=1",
                "--set", "tasks.train_shots=10", "--set", "tasks.test_shots=5",
                "--set", "tasks.split={kind: overlap, shared: 1.0, among: 5}"]
    assert main(["plan", "scenarios/omniglot-quickstart.yaml", *thousand]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 60 and lines[1].split() == ["round", "present", "busy", "arrivals", "classes", "revisits",
                                                     "new", "seen"]
    total = next(line.split() for line in lines if line.startswith("total"))
    assert total[2:] == ["3000", "3000", "0", "600", "600"]  # arrivals, classes, revisits, new, seen
    assert sum(int(line.split()[3]) for line in lines[2:11]) == 3000  # the rounds' arrivals add up
    assert main(["plan", "scenarios/omniglot-quickstart.yaml", *thousand, "--clients"]) == 0
    grid = capsys.readouterr().out.splitlines()
    assert grid[1].split()[-3:] == ["c999", "new", "seen"]


def test_revisits_without_a_round_name_their_classes_and_the_rounds_that_mend_it():
    # Prepare: every class arrives in the plan's last round but half of them are to come back
    raw = {"name": "x", "clients": {"count": 3}, "tasks": {"num_classes": 12, "classes_per_task": 2, "train_shots": 5,
           "test_shots": 5, "revisits": {"fraction": 0.5, "shots": 2}}}
    names = [f"char{c}" for c in range(N_CLASSES)]
    # Execute
    plan = make_plan(parse_scenario(yaml.safe_dump(raw)), CLASS_INDICES, GROUPS, None, names)
    # Assert: the classes named, and the rounds value that gives each a revisit
    assert plan.warnings == ("revisits: 3 of 6 chosen classes have no later round with a target client present: "
                             "10 'char10', 22 'char22', 34 'char34'; rounds: 3 (now 2) leaves each of them a round to "
                             "come back in",)
    mended = make_plan(parse_scenario(yaml.safe_dump({**raw, "rounds": 3})), CLASS_INDICES, GROUPS, None, names)
    assert mended.warnings == () and sum(len(a.revisits) for a in mended.arrivals) == 6


def test_revisits_per_client_bring_that_many_of_each_clients_classes_to_another():
    # Prepare: "two characters per client come back at another client"
    raw = {"name": "x", "clients": {"count": 4}, "rounds": 6, "tasks": {"num_classes": 24, "classes_per_task": 3,
           "train_shots": 5, "test_shots": 5, "revisits": {"per_client": 2, "to": "other", "shots": 2}}}
    # Execute
    _, plan = plan_of(raw)
    # Assert: two of each client's classes, each at a client that never had it
    first = {c: a.client for a in plan.arrivals for c in a.classes if c not in a.revisits}
    back = [(c, a.client) for a in plan.arrivals for c in a.revisits]
    assert plan.warnings == () and len(back) == 8
    assert sorted(Counter(first[c] for c, _ in back).values()) == [2, 2, 2, 2]
    assert all(first[c] != client for c, client in back)
