"""Site tasks: every connected site learns what its folder holds and it has not learned;
its reply names its classes, and the server merges it once.

A site's task is not planned: the server deals each connected site one open task a
round (an :class:`Arrival` with no classes or samples, numbered by the tasks it merged),
and the site answers with what it learned since (nothing: ``task`` ""). Exactly once: a
reply names its offer's id, which the server merges once and lists in every later
message (:class:`strategies.site_book.SiteBook`), and the site's ledger settles its
offers from that list (clients/ledger.py).
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType

from fedrecon import protocol as P
from fedrecon.learning.stats import ClassStats
from fedrecon.plan.records import Arrival
from strategies.rounds import RoundWork
from strategies.state import ServerState
from strategies.validation import PayloadError, check_update, decode_reply, reply_limit

MAX_NAME = 200  # characters of a class name
MAX_CLASSES = 10_000  # class names in one offer (a reply naming more is refused unread)


def deal_sites(state: ServerState, server_round: int) -> RoundWork:
    """One open task for every connected site (a site not connected takes no part)."""
    work = RoundWork(server_round, {})
    budget = state.budget
    if budget is not None and not budget.allows_another():  # past the privacy budget: nothing is released
        state.failures.append({"round": server_round, "client": -1, "task": -1, "reason":
                               f"privacy budget spent (epsilon {budget.config.epsilon} after {budget.releases} rounds)"})
        return work
    for client in sorted(state.nodes.ids):
        work.tasks[client] = (Arrival(server_round, client, state.learned.get(client, 0), (), ()), [])
    return work


def site_task(reply: Message, noisy: bool = False) -> tuple[str, list[str], int]:
    """A reply's offer: its task id ("" for nothing new), class names and samples (raises :class:`PayloadError`)."""
    if reply.has_error():
        raise PayloadError(f"client error {reply.error.code}: {reply.error.reason}")
    if P.SITE_TASK not in reply.content:
        raise PayloadError(f"no ConfigRecord {P.SITE_TASK!r} in the reply")
    config = reply.content[P.SITE_TASK]
    if "error" in config:  # the site's data: its own one line, naming the file
        raise PayloadError(f"site data: {str(config['error'])[:1000]}")
    task, names, samples = config.get("task"), config.get("names", []), config.get("samples", 0)
    if not isinstance(task, str) or len(task) > 64 or not isinstance(samples, int) or samples < (-1 if noisy else 0):
        raise PayloadError("site_task must hold task (a string of up to 64 characters) and samples (a whole number)")
    if not isinstance(names, list) or len(names) > MAX_CLASSES:
        raise PayloadError(f"site_task names must be a list of at most {MAX_CLASSES} class names")
    if not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME for n in names):
        raise PayloadError(f"site_task names must be class names of 1 to {MAX_NAME} characters")
    if len(set(names)) != len(names):
        raise PayloadError("site_task names a class twice")
    return task, list(names), samples


def checked_offer(state: ServerState, reply: Message, client: int) -> tuple[str, ClassStats | None, list[str]]:
    """A site's reply, every part checked: its task id, its statistics (ids: positions in
    its names; None: nothing new, or a task already merged) and its class names."""
    noisy = state.budget is not None
    task, names, samples = site_task(reply, noisy)
    book = state.sites
    if task and book.known(client, task):
        return task, None, names
    if noisy:  # every class of the vocabulary, noised: only the form is checked
        if names != book.vocabulary:
            raise PayloadError("under privacy.dp a reply holds the vocabulary's classes, in its order")
        every = _probe([1] * len(names))
        arrays = decode_reply(reply, state.scenario.faults.max_reply_bytes or reply_limit(every, state.dim, state.spec))
        return task, check_update(arrays, every, state.dim, state.spec, noisy=True), names
    if not task:
        return task, None, names
    if book.vocabulary is not None:
        outside = [n for n in names if n not in book.vocabulary]
        if outside:
            raise PayloadError(f"class {outside[0]!r} is not in sites.classes")
    limit = state.scenario.faults.max_reply_bytes or reply_limit(_probe([1] * len(names)), state.dim, state.spec)
    arrays = decode_reply(reply, limit)
    counts = arrays.get("counts")
    if counts is None or counts.ndim != 1 or len(counts) != len(names):
        raise PayloadError(f"counts must hold one value for each of the {len(names)} names")
    if not np.isfinite(counts).all() or (counts <= 0).any() or (counts != np.rint(counts)).any():
        raise PayloadError("counts must be whole positive numbers of samples")
    if int(counts.sum()) != samples:
        raise PayloadError(f"counts add up to {int(counts.sum())}, not the {samples} samples the reply names")
    # the reply's own counts make the planned task it is checked against, class by class
    return task, check_update(arrays, _probe(counts), state.dim, state.spec), names


def _probe(counts, ids=None) -> Arrival:
    """A planned task of classes ``ids`` (default 0..k-1) with ``counts`` samples each, for :func:`check_update`."""
    sizes = [int(c) for c in counts]
    ids = range(len(sizes)) if ids is None else ids
    return Arrival(0, 0, 0, tuple(int(i) for i in ids), tuple(tuple(range(n)) for n in sizes))


def _merge(state: ServerState, server_round: int, updates: list[ClassStats]) -> None:
    """Merge a round's site statistics by the policy, and mark what changed for the sites' model updates."""
    before = state.stats
    state.stats = state.policy.merge(state.stats, updates)
    state.sites.merged(before, state.stats, server_round)


class SiteLearning:
    """What a site task carries (the run's token, the site's accepted task ids) and how
    its checked replies merge: the names mapped to the server's class ids, the statistics
    merged by the policy, the tasks marked accepted and what changed marked for the sites'
    model updates."""

    message_type = MessageType.TRAIN

    def describe(self) -> str:
        return "sites: each learns what its own folder holds, classes matched by name"

    def round_records(self, state: ServerState) -> tuple[dict, dict, dict]:
        return {}, {}, {}

    def client_records(self, state: ServerState, client: int) -> dict:
        book = state.sites
        return {P.SITE_CONFIG: ConfigRecord({"run": book.run, "accepted": list(book.accepted.get(client, [])),
                                             "dim": state.dim})}

    def check(self, state: ServerState, reply: Message, arrival: Arrival, sent: dict):
        return checked_offer(state, reply, arrival.client)

    def fold(self, state: ServerState, server_round: int, accepted: list[tuple[Arrival, tuple]]) -> None:
        book, updates = state.sites, []
        for arrival, (task, stats, names) in accepted:
            if stats is None:
                continue
            ids = np.array(book.ids_of([names[int(i)] for i in stats.ids]), dtype=np.int64)
            order = np.argsort(ids)
            updates.append(ClassStats(ids[order], stats.counts[order], stats.sums[order],
                                      {k: v[order] for k, v in stats.extra.items()}, stats.shared))
            if task:  # (under privacy.dp an empty offer carries the noise alone: the release is data-independent)
                noisy = state.budget is not None
                book.accept(arrival.client, task, None if noisy else int(round(float(stats.counts.sum()))))
        if updates and state.budget is not None:  # each reply carried the whole noise (std(1)) on every value
            book.noise += len(updates) * state.budget.std(1) ** 2
        if updates:
            _merge(state, server_round, updates)


def site_classes(state: ServerState) -> list[int]:
    """Secure aggregation's layout for sites: every class of the vocabulary, in its order."""
    return list(range(len(state.sites.vocabulary)))


def checked_site_sum(state: ServerState, arrays: dict[str, np.ndarray]) -> ClassStats:
    """The survivors' unmasked sum (the classes with a positive count; under privacy.dp
    every class, noised), checked as one reply whose counts are whole numbers of samples."""
    counts, noisy = arrays["counts"], state.budget is not None
    if not noisy and (counts != np.rint(counts)).any():
        raise PayloadError("the summed counts are not whole numbers of samples")
    probe = _probe([max(int(c), 1) if noisy else int(c) for c in counts], arrays["ids"])
    return check_update(arrays, probe, state.dim, state.spec, noisy=noisy)


def fold_site_sum(state: ServerState, server_round: int, update: ClassStats, offers: dict[int, str],
                  threshold: int = 1) -> None:
    """Merge a round's secure sum (ids: the vocabulary's) and accept every survivor's offer
    (under privacy.dp each survivor added ``std(threshold)`` on every value)."""
    book = state.sites
    if state.budget is not None:
        book.noise += len(offers) * state.budget.std(threshold) ** 2
    for client, task in sorted(offers.items()):
        if task:
            book.accept(client, task)
    if len(update):
        _merge(state, server_round, [update])
