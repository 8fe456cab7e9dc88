"""What a site scenario's run needs before it starts: the policy, the backbone and its
feature size, and a plan of rounds only (the sites' data is theirs: the server reads none)."""

from __future__ import annotations

import numpy as np

from fedrecon.data.dataset import ClassDataset
from fedrecon.plan import Plan


def probe_dataset(scenario) -> ClassDataset:
    """One blank sample of the kind the sites read (a drawing, a photo, a sentence), so the
    backbone checks that read a dataset's first sample (its modality, its feature size)
    run unchanged; it is never learned."""
    sites = scenario.sites
    size = sites.image_size
    if sites.read == "text":
        inputs = np.empty(1, dtype=object)
        inputs[0] = "a sentence"
    elif sites.read == "ink":
        inputs = np.zeros((1, 1, size, size), np.float32)
    else:
        inputs = np.zeros((1, 3, size, size), np.uint8)
    return ClassDataset(inputs, np.zeros(1, np.int64), ("probe",), ("probe",))


def site_plan(scenario, one_site: bool) -> Plan:
    """The rounds, no arrivals: each site's tasks are the data it gets. Under a one-site
    policy (``centralized``) client 0 reads every site's folder."""
    clients = 1 if one_site else scenario.clients.count
    return Plan(rounds=scenario.rounds, clients=clients, arrivals=(), test_samples={})
