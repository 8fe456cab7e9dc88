"""Checks between keys of a scenario that need neither the data nor the backbone built.

Every problem is found, not just the first. Checks against the data and the plan are
in :mod:`fedrecon.plan.build`; checks of plug-ins (imported, built) in ``server``, which
runs :func:`policy_checks` on a plug-in policy once it is imported.
"""

from __future__ import annotations

from fedrecon.backbones.registry import BACKBONES
from fedrecon.data.registry import DATASETS, OPTIONAL_KEYS
from fedrecon.learning.prototype_merges import (PROTOTYPE_POLICIES, MergePolicy, is_one_site, is_per_client,
                                                needs_beyond_sums, needs_only_sums)
from fedrecon.scenario.base import per_client
from fedrecon.scenario.errors import SourceMap
from fedrecon.scenario.method_checks import HEAD_KEYS, adapter_checks, method_checks
from fedrecon.scenario.scenario import Scenario
from fedrecon.scenario.sections import MergeConfig
from fedrecon.scenario.site_checks import site_checks

def cross_checks(s: Scenario, source: SourceMap) -> list[str]:
    # a built-in policy's members are known from its class; a plug-in's once it is imported (server.prepare)
    builtin = PROTOTYPE_POLICIES.get(s.merge.prototypes)
    sites = site_checks(s, source)
    if s.sites is not None or s.tasks is None:  # no plan: the checks of a plan's keys and data do not apply
        return [*sites, *adapter_checks(s, source), *method_checks(s, source), *_fault_checks(s, source)]
    return [*_task_checks(s, source), *_client_checks(s, source), *_split_checks(s, source), *_event_checks(s, source),
            *adapter_checks(s, source), *method_checks(s, source), *_fault_checks(s, source), *_data_checks(s, source),
            *_revisit_checks(s, source), *_privacy_checks(s, source), *_edge_checks(s, source),
            *(policy_checks(s, source, builtin) if builtin is not None else [])]


def policy_checks(s: Scenario, source: SourceMap, policy: MergePolicy) -> list[str]:
    """What the prototype merge policy (a built-in's class, or a plug-in once made) rules
    out elsewhere in the scenario: its optional members say what it needs."""
    name, problems = s.merge.prototypes, []
    if is_per_client(policy) and s.evaluation.where == "clients":
        problems.append(source.error(("merge", "prototypes"), f"policy {name!r} is scored per client on the server; "
                                                              "use evaluation.where: server"))
    if s.privacy.secure_aggregation and s.merge.method == "prototypes" and not needs_only_sums(policy):
        problems.append(source.error(("privacy", "secure_aggregation"), f"merge.prototypes {name} {needs_beyond_sums(policy)}: "
                                                                        "the server would learn only the round's sum; use exact"))
    if is_one_site(policy):
        for k, fault in enumerate(s.faults.inject):
            if fault.client != 0:
                problems.append(source.error(("faults", "inject", k, "client"), f"{name} runs one site (client 0): every "
                                             f"task goes there, so client {fault.client} never gets one"))
    return problems


def _edge_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Edges add their clients' statistics and the top tier adds the edges' sums: only a
    merge that is a sum stays exact under that, so anything else is refused."""
    c, problems = s.clients, []
    if c.edges > c.count:
        problems.append(source.error(("clients", "edges"), f"{c.edges} edges for {c.count} clients: at most one edge a client"))
    if c.edge is not None and c.edges == 1:
        problems.append(source.error(("clients", "edge"), "needs clients.edges of 2 or more (the edge is one of those groups)"))
    elif c.edge is not None and c.edge >= c.edges:
        problems.append(source.error(("clients", "edge"), f"edge {c.edge} of {c.edges}: allowed 0 to {c.edges - 1}"))
    if c.edges == 1:
        return problems
    loc = ("clients", "edges")
    if s.merge.method != "prototypes" or s.merge.prototypes != "exact":
        what = s.merge.method if s.merge.method != "prototypes" else f"merge.prototypes {s.merge.prototypes}"
        problems.append(source.error(loc, f"{what} is not a sum of the clients' statistics: edges need merge.prototypes exact"))
    if s.adapters.active:
        problems.append(source.error(loc, "adapters merge over the whole federation: edges need adapters.schedule frozen"))
    if s.privacy.secure_aggregation:
        problems.append(source.error(loc, "secure aggregation sums at one server, not at edges yet: use one or the other"))
    return problems


def _dp_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Differential privacy noises counts, sums and second moments: what it cannot noise is refused."""
    if s.privacy.dp is None:
        return []
    loc, problems = ("privacy", "dp"), []
    if s.merge.method != "prototypes":
        problems.append(source.error(loc, "fedavg_finetune releases whole models: differential privacy noises class statistics"))
    if s.adapters.active:
        problems.append(source.error(loc, "adapter updates are not noised yet: use adapters.schedule frozen"))
    return problems


def _privacy_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Secure aggregation reveals only sums: what needs more than a sum is refused, not approximated."""
    problems = _dp_checks(s, source)
    if not s.privacy.secure_aggregation:
        for k, fault in enumerate(s.faults.inject):
            if fault.kind == "drop_mid_aggregation":
                problems.append(source.error(("faults", "inject", k, "kind"), "drop_mid_aggregation needs "
                                                                             "privacy.secure_aggregation: true"))
        return problems
    loc = ("privacy", "secure_aggregation")
    if s.merge.method != "prototypes":
        problems.append(source.error(loc, "fedavg_finetune sends whole models: secure aggregation sums class statistics"))
    if s.merge.adapters == "stack":
        problems.append(source.error(loc, "merge.adapters stack refactorises each client's factors: use ffa or fedavg"))
    if s.adapters.steps:
        problems.append(source.error(loc, "adapter steps are not securely aggregated yet: use adapters.steps 0"))
    if s.adapters.staleness == "compensate":
        problems.append(source.error(loc, "compensate's drift sums are not securely aggregated yet: use staleness keep"))
    if s.evaluation.where == "clients":
        problems.append(source.error(loc, "clients' evaluation counts are not securely aggregated yet: use evaluation.where server"))
    return problems


def _task_checks(s: Scenario, source: SourceMap) -> list[str]:
    t, split, problems = s.tasks, s.tasks.split.kind, []
    chooses_classes = split not in ("group", "explicit")
    if chooses_classes and t.num_classes is None:
        problems.append(source.error(("tasks", "num_classes"), f"required key is missing (split {split} draws this many classes)"))
    if not chooses_classes and t.num_classes is not None:
        problems.append(source.error(("tasks", "num_classes"), f"not used with split {split}: the split names the classes; remove it"))
    if split != "group" and t.classes_per_task is None:
        problems.append(source.error(("tasks", "classes_per_task"), "required key is missing"))
    if split == "group" and t.classes_per_task is not None:
        problems.append(source.error(("tasks", "classes_per_task"), "not used with split group: a task is whole groups; remove it"))
    if t.num_classes is not None and t.classes_per_task is not None and t.classes_per_task > t.num_classes:
        problems.append(source.error(("tasks", "classes_per_task"), f"{t.classes_per_task} is more than tasks.num_classes ({t.num_classes})"))
    return problems


def _client_checks(s: Scenario, source: SourceMap) -> list[str]:
    t, c, n, problems = s.tasks, s.clients, s.clients.count, []
    per_client_lists = [
        (("clients", "join"), c.join),
        (("clients", "leave"), c.leave),
        (("clients", "dropout"), c.dropout),
        (("tasks", "arrival", "offset"), getattr(t.arrival, "offset", None)),
        (("tasks", "arrival", "rate"), getattr(t.arrival, "rate", None)),
        (("tasks", "split", "clients"), getattr(t.split, "clients", None)),
    ]
    for loc, value in per_client_lists:
        if isinstance(value, list) and len(value) != n:
            problems.append(source.error(loc, f"has {len(value)} values, one per client is needed (clients.count = {n})"))
    joins = per_client(c.join, n) if not isinstance(c.join, list) or len(c.join) == n else []
    leaves = per_client(c.leave, n) if not isinstance(c.leave, list) or len(c.leave) == n else []
    for i, (j, lv) in enumerate(zip(joins, leaves)):
        loc = ("clients", "leave", i) if isinstance(c.leave, list) else ("clients", "leave")
        if lv is not None and lv <= j:
            problems.append(source.error(loc, f"client {i} leaves in round {lv} but joins in round {j}: leave must be after join"))
            if not isinstance(c.leave, list) and not isinstance(c.join, list):
                break  # the same pair for every client: say it once
    if s.rounds is not None:
        for i, j in enumerate(joins):
            if j > s.rounds:
                loc = ("clients", "join", i) if isinstance(c.join, list) else ("clients", "join")
                problems.append(source.error(loc, f"client {i} joins in round {j}, after the last round ({s.rounds})"))
                if not isinstance(c.join, list):
                    break
    return problems


def _split_checks(s: Scenario, source: SourceMap) -> list[str]:
    t, n, split, problems = s.tasks, s.clients.count, s.tasks.split.kind, []
    holders = 0
    if split == "overlap":
        if t.split.among is not None and t.split.among > n:
            problems.append(source.error(("tasks", "split", "among"), f"{t.split.among} clients, but clients.count is {n}"))
        if t.num_classes is not None and round(t.split.shared * t.num_classes) < 1:
            problems.append(source.error(("tasks", "split", "shared"), f"{t.split.shared} of {t.num_classes} classes is less than one class"))
        holders = t.split.among or n
    if split == "explicit":
        counts: dict[int, int] = {}
        for classes in t.split.clients:
            for cls in set(classes):
                counts[cls] = counts.get(cls, 0) + 1
        holders = max(counts.values(), default=0)
        for i, classes in enumerate(t.split.clients):
            seen: set[int] = set()
            for k, cls in enumerate(classes):
                if cls in seen:
                    problems.append(source.error(("tasks", "split", "clients", i, k), f"class {cls} is listed twice for client {i} "
                                                 "(a second arrival is a revisit: use tasks.revisits)"))
                seen.add(cls)
    if t.train_shots is not None and holders > t.train_shots:
        problems.append(source.error(("tasks", "train_shots"), f"{t.train_shots} is fewer than the {holders} clients that share "
                                     "a class (each needs one sample)"))
    if split in ("overlap", "dirichlet") and n == 1:
        problems.append(source.error(("tasks", "split", "kind"), f"split {split} needs at least two clients (clients.count is 1)"))
    return problems


def _event_checks(s: Scenario, source: SourceMap) -> list[str]:
    t, n, problems = s.tasks, s.clients.count, []
    if t.arrival.kind != "explicit":
        return problems
    for client, events in t.arrival.clients.items():
        if not 0 <= client < n:
            problems.append(source.error(("tasks", "arrival", "clients", client), f"no client {client}: ids are 0..{n - 1} (clients.count = {n})"))
        for k, event in enumerate(events):
            here = ("tasks", "arrival", "clients", client, k)
            given = [key for key in ("classes", "groups", "count") if getattr(event, key) is not None]
            if len(given) > 1:
                problems.append(source.error(here + (given[1],), f"give one of classes, groups or count, not {' and '.join(given)}"))
            if s.rounds is not None and event.round > s.rounds:
                problems.append(source.error(here + ("round",), f"round {event.round} is after the last round ({s.rounds})"))
            if k and event.round < events[k - 1].round:
                problems.append(source.error(here + ("round",), f"round {event.round} comes before the previous event's round "
                                             f"{events[k - 1].round}; list events in order"))
    return problems


def _revisit_checks(s: Scenario, source: SourceMap) -> list[str]:
    rv, problems = s.tasks.revisits, []
    if rv is None:
        return problems
    if (rv.fraction is None) == (rv.per_client is None):  # how many come back: said one way
        loc = ("tasks", "revisits") + (("per_client",) if rv.fraction else ())
        problems.append(source.error(loc, "give fraction (of all arrived classes) or per_client (of each client's "
                                          f"classes), one of them; got {'both' if rv.fraction else 'neither'}"))
    if s.tasks.train_shots is None:
        problems.append(source.error(("tasks", "revisits"), "train_shots null uses every training sample at the first arrival; "
                                     "a revisit needs unused ones: give train_shots a number"))
    if rv.to == "other" and s.clients.count == 1:
        problems.append(source.error(("tasks", "revisits", "to"), "'other' needs at least two clients (clients.count is 1)"))
    if s.rounds is not None and rv.after >= s.rounds:
        problems.append(source.error(("tasks", "revisits", "after"), f"{rv.after} rounds after a first arrival is past the last round ({s.rounds})"))
    return problems


def _fault_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Injected faults name existing clients and rounds, at most one per client and round."""
    problems, seen = [], set()
    for k, fault in enumerate(s.faults.inject):
        here = ("faults", "inject", k)
        if fault.client >= s.clients.count:
            problems.append(source.error(here + ("client",), f"no client {fault.client}: ids are 0..{s.clients.count - 1}"))
        if s.rounds is not None and fault.round > s.rounds:
            problems.append(source.error(here + ("round",), f"round {fault.round} is after the last round ({s.rounds})"))
        if (fault.client, fault.round) in seen:
            problems.append(source.error(here, f"client {fault.client} already has a fault in round {fault.round}"))
        seen.add((fault.client, fault.round))
    return problems


def _data_checks(s: Scenario, source: SourceMap) -> list[str]:
    """Dataset, backbone and head keys that only make sense together."""
    problems: list[str] = []
    d = s.data
    entry = DATASETS.get(d.dataset)
    if entry is not None:
        for key in entry.needs:
            if getattr(d, key) is None:
                problems.append(source.error(("data", key), f"required key is missing (dataset {d.dataset} reads it)"))
        for key in OPTIONAL_KEYS:
            if key not in entry.reads and getattr(d, key) is not None:
                readers = [name for name, e in DATASETS.items() if key in e.reads]
                problems.append(source.error(("data", key), f"used only by dataset {' or '.join(readers)}, not {d.dataset}; remove it"))
    if d.dataset == "omniglot" and d.image_size > 105:
        problems.append(source.error(("data", "image_size"), f"Omniglot drawings are 105 pixels; {d.image_size} is more"))
    backbone = BACKBONES.get(s.model.backbone)
    if backbone is not None and entry is not None and backbone.modality != entry.modality:
        problems.append(source.error(("model", "backbone"), f"{s.model.backbone} reads {backbone.modality}, "
                                                            f"dataset {d.dataset} is {entry.modality}"))
    for key, head in HEAD_KEYS.items():
        # a default written out (the demo says metric: euclidean) changes nothing, so another head can be
        # chosen with --set alone; another value would be ignored by the head chosen
        written = key in s.merge.model_fields_set and getattr(s.merge, key) != MergeConfig.model_fields[key].default
        if written and s.merge.head != head:
            problems.append(source.error(("merge", key), f"used only by head {head}, not {s.merge.head}; remove it "
                                                         f"(from the command line: --unset merge.{key})"))
    return problems
