"""Everything a run needs, checked before Flower starts: plug-ins, data, backbone, plan.

``fedrecon validate`` calls :func:`check`; ``fedrecon run`` and the ServerApp call
:func:`prepare`, which checks the same and builds the backbone. Each problem is one
``file:line:col: key: message`` line of a :class:`ScenarioError`; one about a plug-in
is raised from the plug-in's own exception, whose traceback ``fedrecon --debug`` shows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedrecon.backbones.registry import BACKBONES, BackboneEntry, backbone_entry, described
from fedrecon.data.dataset import ClassDataset, DataError
from fedrecon.data.registry import DATASETS, load_dataset
from fedrecon.learning.prototype_merges import PROTOTYPE_POLICIES, is_one_site, make_policy
from fedrecon.paths import missing_checkpoint
from fedrecon.plan import Plan, make_plan
from fedrecon.plugins import PluginError
from fedrecon.scenario import Scenario, ScenarioError, source_of
from fedrecon.scenario.checks import policy_checks
from fedrecon.scenario.sections import DATA_ROOT_RULE, default_data_root


@dataclass(frozen=True)
class Prepared:
    """A checked scenario with its data, plan and backbone.

    ``model`` and ``dim`` (the summarised features' size) are None and 0 after :func:`check`
    unless a check had to build the backbone; ``weights`` and ``digest`` are set by :func:`prepare`. ``adapted`` is the server's own
    adapted copy of the backbone (adapters only), which it scores the merged adapter with.
    """

    scenario: Scenario
    dataset: ClassDataset
    plan: Plan
    entry: BackboneEntry
    model: object = None
    adapted: object = None
    weights: dict | None = None
    digest: str = ""
    dim: int = 0


def _fail(scenario: Scenario, loc: tuple, message: str) -> ScenarioError:
    return ScenarioError([source_of(scenario).error(loc, message)])


def _policy(scenario: Scenario):
    try:
        policy = make_policy(scenario.merge.prototypes)
    except PluginError as exc:
        raise _fail(scenario, ("merge", "prototypes"), str(exc)) from exc
    if scenario.merge.prototypes not in PROTOTYPE_POLICIES:
        # a plug-in says what it needs by its members, known only now that it is imported and
        # made; a built-in's were checked with the rest of the scenario (fedrecon.scenario.checks)
        problems = policy_checks(scenario, source_of(scenario), policy)
        if problems:
            raise ScenarioError(problems)
    return policy


def _dataset(scenario: Scenario) -> ClassDataset:
    try:
        dataset = load_dataset(scenario.data)
    except PluginError as exc:
        raise _fail(scenario, ("data", "dataset"), str(exc)) from exc
    except (DataError, OSError) as exc:
        raise _data_error(scenario, exc) from None
    except Exception as exc:  # a plug-in loader that fails its own way: one line, its traceback kept
        if scenario.data.dataset in DATASETS:
            raise
        raise _fail(scenario, ("data", "dataset"), f"loading {scenario.data.dataset} failed: "
                                                   f"{type(exc).__name__}: {exc}") from exc
    # a plug-in dataset's modality is known once it is loaded (built-in datasets: fedrecon.scenario.checks)
    backbone = BACKBONES.get(scenario.model.backbone)
    if scenario.data.dataset not in DATASETS and backbone is not None and backbone.modality != dataset.modality:
        raise _fail(scenario, ("data", "dataset"), f"{scenario.data.dataset} gives {dataset.modality} samples, "
                                                   f"backbone {scenario.model.backbone} reads {backbone.modality}")
    return dataset


def _data_error(scenario: Scenario, exc: Exception) -> ScenarioError:
    """A data problem, blamed on the key that names the file it is about; at the default
    root, where that is and why (the scenario most likely left data.root out)."""
    d = scenario.data
    key = next((k for k in ("test_path", "path") if getattr(d, k) and getattr(d, k) in str(exc)), "root")
    message = " ".join(str(exc).split())
    if key == "root" and d.root == default_data_root():
        message += f" ({DATA_ROOT_RULE})"
    return _fail(scenario, ("data", key), message)


def _paths(scenario: Scenario) -> tuple[ClassDataset | None, list[str]]:
    """The dataset, and every path problem at once: the data's and the checkpoint's
    (a wrong root and a wrong checkpoint in one file are one report, not two runs)."""
    problems, dataset = [], None
    try:
        dataset = _dataset(scenario)
    except ScenarioError as exc:
        if exc.__cause__ is not None:  # a plug-in's failure: its own traceback goes with it
            raise
        problems += exc.problems
    checkpoint = scenario.model.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        problems.append(source_of(scenario).error(("model", "checkpoint"), missing_checkpoint(checkpoint)))
    return dataset, problems


def _needs_build(scenario: Scenario, entry: BackboneEntry) -> bool:
    """Whether checking the backbone means building it: a checkpoint to load, a plug-in
    to try, or adapter layers to find. Otherwise no torch is imported."""
    return scenario.model.checkpoint is not None or not entry.modality or scenario.adapters.active


def _backbone(scenario: Scenario, dataset: ClassDataset, build: bool) -> tuple[BackboneEntry, object, object]:
    """The backbone's entry, and the module and adapted copy when built (else None)."""
    m = scenario.model
    try:
        entry = backbone_entry(m.backbone)
    except PluginError as exc:
        raise _fail(scenario, ("model", "backbone"), str(exc)) from exc
    missing = entry.missing_weights()
    if missing:
        raise _fail(scenario, ("model", "backbone"), f"{m.backbone}: {missing}")
    if not (build or _needs_build(scenario, entry)):
        return entry, None, None
    from fedrecon.backbones.embed import build_backbone, read_checkpoint

    try:
        model = build_backbone(m.backbone)
        entry = described(entry, model)
    except PluginError as exc:
        raise _fail(scenario, ("model", "backbone"), str(exc)) from exc
    except Exception as exc:  # a builder that fails: one line, its traceback kept
        raise _fail(scenario, ("model", "backbone"), f"building {m.backbone} failed: {type(exc).__name__}: {exc}") from exc
    if m.checkpoint is not None:
        try:
            model.load_state_dict(read_checkpoint(m.checkpoint))
        except (OSError, RuntimeError) as exc:
            raise _fail(scenario, ("model", "checkpoint"), " ".join(str(exc).split())[:500]) from None
    if m.backbone not in BACKBONES:
        _try_plugin(scenario, model, entry, dataset)
    adapted = None
    if scenario.adapters.active:
        from fedrecon.learning.lora import Adapted

        try:
            adapted = Adapted(copy.deepcopy(model), entry, scenario.adapters)
        except ValueError as exc:
            raise _fail(scenario, ("adapters", "targets"), str(exc)) from None
    return entry, model.eval(), adapted


def _try_plugin(scenario: Scenario, model, entry: BackboneEntry, dataset: ClassDataset) -> None:
    """A plug-in backbone reads the dataset's samples and returns one row of features each."""
    from fedrecon.backbones.embed import embed

    if entry.modality != dataset.modality:
        raise _fail(scenario, ("model", "backbone"), f"{scenario.model.backbone} reads {entry.modality}, "
                                                     f"dataset {scenario.data.dataset} is {dataset.modality}")
    try:
        features = embed(model, dataset.inputs[:2])
    except Exception as exc:  # whatever the plug-in raises on two real samples
        raise _fail(scenario, ("model", "backbone"), f"{scenario.model.backbone} failed on two samples of shape "
                                                     f"{dataset.inputs[:2].shape}: {type(exc).__name__}: {exc}") from exc
    if features.ndim != 2 or features.shape[0] != 2 or not np.isfinite(features).all():
        raise _fail(scenario, ("model", "backbone"), f"{scenario.model.backbone} must map a batch of 2 samples to finite "
                                                     f"features (2, d), got shape {features.shape}")


def _tracking(scenario: Scenario) -> None:
    """A tracker the scenario names must be installed (they are optional extras): a
    question about this machine, not the file, so it is asked here and not when it is read."""
    import importlib.util

    from server.tracking import INSTALL

    for name, install in INSTALL.items():
        if getattr(scenario.tracking, name) is not None and importlib.util.find_spec(name) is None:
            raise _fail(scenario, ("tracking", name), f"{name} is not installed: {install}")
    if scenario.privacy.dp is not None and importlib.util.find_spec("dp_accounting") is None:
        raise _fail(scenario, ("privacy", "dp"), "dp-accounting (the privacy accountant) is not installed: "
                                                 "pip install 'fedrecon[dp]' (or: pip install dp-accounting)")


def check(scenario: Scenario, build: bool = False) -> Prepared:
    """Every check a run makes before it starts, without starting it: the merge policy,
    the trackers, the data, the backbone (built only where a check needs it, or with
    ``build``) and the plan. Raises :class:`ScenarioError`. What the scenario alone
    rules out was refused when it was read; these need a plug-in imported, this
    machine's packages, the data or the backbone."""
    policy = _policy(scenario)
    _tracking(scenario)
    if scenario.sites is not None:  # the server reads no data: a blank sample checks the backbone
        return _site_check(scenario, policy, build)
    dataset, problems = _paths(scenario)
    if problems:
        raise ScenarioError(problems)
    # under privacy.dp the noise is weighed against the features: their size needs the backbone built
    entry, model, adapted = _backbone(scenario, dataset, build or scenario.privacy.dp is not None)
    train_indices, test_indices = dataset.split_indices()
    plan = make_plan(scenario, train_indices, dataset.groups, test_indices, dataset.class_names)
    if is_one_site(policy):
        plan = plan.at_one_site()
    if scenario.privacy.secure_aggregation:
        alone = [r for r in range(1, plan.rounds + 1) if len({a.client for a in plan.arrivals_at(r)}) == 1]
        if alone:
            shown = ", ".join(map(str, alone[:10])) + (" ..." if len(alone) > 10 else "")
            plan = replace(plan, warnings=(*plan.warnings, f"secure aggregation: rounds {shown} have a single client, "
                                                           "whose statistics are the round's sum"))
    dim = _feature_size(scenario, dataset, adapted.model if adapted else model) if model is not None else 0
    if scenario.privacy.dp is not None:
        from server.noise_check import drowning_warnings

        plan = replace(plan, warnings=(*plan.warnings, *drowning_warnings(scenario, plan, dim)))
    return Prepared(scenario, dataset, plan, entry, model, adapted, dim=dim)


def _site_check(scenario: Scenario, policy, build: bool) -> Prepared:
    """:func:`check` for sites: the checkpoint, the backbone on a blank sample of the
    sites' kind, and a plan of rounds. Prepared's ``dataset`` is that sample."""
    from server.site_prepare import probe_dataset, site_plan

    checkpoint = scenario.model.checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise ScenarioError([source_of(scenario).error(("model", "checkpoint"), missing_checkpoint(checkpoint))])
    probe = probe_dataset(scenario)
    entry, model, _ = _backbone(scenario, probe, build)
    if entry.modality and entry.modality != scenario.sites.modality:
        raise _fail(scenario, ("sites", "read"), f"{scenario.sites.read} samples, but backbone {scenario.model.backbone} "
                                                 f"reads {entry.modality}")
    dim = _feature_size(scenario, probe, model) if model is not None else 0
    return Prepared(scenario, probe, site_plan(scenario, is_one_site(policy)), entry, model, None, dim=dim)


def _feature_size(scenario: Scenario, dataset: ClassDataset, model) -> int:
    """The size of the features a client summarises, from the first sample (under adapters
    the adapted copy's: twice the backbone's under ``features: both``)."""
    from fedrecon.backbones.embed import embed

    try:  # the first use of the samples: a file that is corrupt inside is found here, before the run
        first = dataset.inputs[:1]
    except (DataError, OSError) as exc:
        raise _data_error(scenario, exc) from None
    return int(embed(model, first).shape[1])


def check_simulation_devices(scenario: Scenario) -> None:
    """In simulation the clients run on this machine: a GPU share or a CUDA device it does
    not have would leave Ray waiting for resources that never come, or fail in every client.
    (A deployment's SuperNodes have their own devices; this is not asked there, nor for an
    existing Ray cluster's, whose machines have theirs, but that cluster must answer.)"""
    if scenario.simulation.ray_address:
        check_ray_address(scenario)
        return
    if not (scenario.simulation.num_gpus > 0 or scenario.model.device.startswith("cuda")):
        return  # nothing to ask torch (not imported for a scenario that needs no torch)
    import torch

    if torch.cuda.is_available():
        return
    if scenario.simulation.num_gpus > 0:
        raise _fail(scenario, ("simulation", "num_gpus"), f"{scenario.simulation.num_gpus:g} GPUs per client, but torch "
                    "sees no CUDA GPU on this machine: use 0 (CPU), or run where there is one")
    if scenario.model.device.startswith("cuda"):
        raise _fail(scenario, ("model", "device"), f"{scenario.model.device!r}, but torch sees no CUDA GPU on this "
                    "machine: use auto or cpu")


def check_ray_address(scenario: Scenario, wait: float = 5.0) -> None:
    """An address of an existing Ray cluster must answer before the run starts: Ray itself
    retries a wrong one without end, and ignores SIGTERM meanwhile (Ray's ``auto`` hangs the
    same way when no cluster runs, so the head's own address is asked for)."""
    import socket

    address = scenario.simulation.ray_address
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise _fail(scenario, ("simulation", "ray_address"), f"{address!r}: allowed host:port or ray://host:port, "
                    "the head's address that ray start --head prints")
    try:
        socket.create_connection((host, int(port)), timeout=wait).close()
    except OSError as e:
        raise _fail(scenario, ("simulation", "ray_address"), f"no Ray cluster answers at {host}:{port} ({e.strerror or e}): "
                    "start one with ray start --head, or leave it null") from None


def prepare(scenario: Scenario) -> Prepared:
    """:func:`check` with the backbone built, then its weights and their digest."""
    from fedrecon.backbones.embed import state_to_numpy
    from fedrecon.backbones.weights import state_digest

    checked = check(scenario, build=True)
    weights = state_to_numpy(checked.model)
    return replace(checked, weights=weights, digest=state_digest(weights))
