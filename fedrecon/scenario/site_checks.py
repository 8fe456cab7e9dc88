"""What a scenario with ``sites`` rules out: the plan's keys, and what sites cannot do yet.

A site scenario has no plan (each site's tasks are the data it gets), so the keys that
shape one are refused rather than ignored; what needs the server to hold the data
(scoring on the server) or more than the sites send is refused with what to use instead.
"""

from __future__ import annotations

from fedrecon.learning.prototype_merges import PROTOTYPE_POLICIES, is_per_client
from fedrecon.scenario.errors import SourceMap


def site_checks(s, source: SourceMap) -> list[str]:
    """Every problem of a scenario's ``sites`` and ``tasks`` together (none: fine)."""
    if s.sites is None:
        return [] if s.tasks is not None else [source.error(("tasks",), "required key is missing (or sites: each "
                                                                         "client's data is its own)")]
    problems = _plan_keys(s, source)
    loc, sites = ("sites",), s.sites
    if sites.folders and len(sites.folders) != s.clients.count:
        problems.append(source.error(loc + ("folders",), f"{len(sites.folders)} folders for {s.clients.count} clients: "
                                                          "one a client, or none (each node names its own)"))
    if s.rounds is None:
        problems.append(source.error(("rounds",), "required with sites (how many rounds the federation runs)"))
    if "dataset" in s.data.model_fields_set:
        problems.append(source.error(("data", "dataset"), "not used with sites: each site's data is its own "
                                                           "(sites.read says how its samples are read); remove data"))
    if s.evaluation.where != "clients":
        problems.append(source.error(("evaluation", "where"), "the server holds no data with sites: use clients "
                                                               "(each site scores its own test part)"))
    if s.merge.method != "prototypes":
        problems.append(source.error(("merge", "method"), "fedavg_finetune trains on the plan's samples: sites "
                                                           "send class statistics (use prototypes)"))
    policy = PROTOTYPE_POLICIES.get(s.merge.prototypes)
    if policy is not None and is_per_client(policy()):
        problems.append(source.error(("merge", "prototypes"), f"{s.merge.prototypes} keeps a head a client, scored on "
                                                               "the server's data: sites share one model (use exact)"))
    if s.adapters.active:
        problems.append(source.error(("adapters", "schedule"), "adapters are not trained at sites yet: use frozen"))
    if s.privacy.secure_aggregation and sites.classes is None:
        problems.append(source.error(loc + ("classes",), "required under secure aggregation: the vocabulary fixes "
                                                          "the sum's layout, so the server learns only sums"))
    elif s.privacy.dp is not None and sites.classes is None:
        problems.append(source.error(loc + ("classes",), "required under privacy.dp: every site noises every class "
                                                          "of the vocabulary, so which classes it holds is not released"))
    if s.clients.edges > 1 or s.clients.edge is not None:
        problems.append(source.error(("clients", "edges"), "edges sum planned tasks: not with sites yet"))
    for key in ("join", "leave", "dropout", "fraction"):
        if key in s.clients.model_fields_set:
            problems.append(source.error(("clients", key), "not used with sites: a site takes part in a round when "
                                                           "its node is connected"))
    return problems


def _plan_keys(s, source: SourceMap) -> list[str]:
    if s.tasks is not None:
        return [source.error(("tasks",), "not used with sites: a site's tasks are the data it gets; remove tasks")]
    return []
