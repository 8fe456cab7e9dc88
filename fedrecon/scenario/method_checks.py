"""Checks of what a run learns: the adapters, and the keys ``fedavg_finetune`` would ignore."""

from __future__ import annotations

from fedrecon.backbones.registry import BACKBONES
from fedrecon.scenario.errors import SourceMap
from fedrecon.scenario.scenario import Scenario
from fedrecon.scenario.sections import MergeConfig

# The head each head-only key belongs to.
HEAD_KEYS = {"metric": "ncm", "shrinkage": "lda", "ridge_lambda": "ridge", "random_features": "ridge"}


def adapter_checks(s: Scenario, source: SourceMap) -> list[str]:
    a, problems = s.adapters, []
    if not a.active:
        if s.merge.adapters != "none":
            problems.append(source.error(("merge", "adapters"), f"{s.merge.adapters!r} merges adapters, but adapters.schedule is "
                                                                  "frozen (no adapter): set a schedule or remove it"))
        if a.features != "adapted":
            problems.append(source.error(("adapters", "features"), f"{a.features!r} sets adapted features beside the frozen "
                                                                   "ones, but adapters.schedule is frozen (no adapter): set "
                                                                   "a schedule, or features adapted"))
        return problems
    entry = BACKBONES.get(s.model.backbone)  # a plug-in's default layers are known once it is built
    if a.targets is None and entry is not None and entry.targets is None:
        with_targets = sorted(name for name, e in BACKBONES.items() if e.targets)
        problems.append(source.error(("adapters", "schedule"), f"backbone {s.model.backbone} has no layers to adapt "
                                                               f"(adapters work on {', '.join(with_targets)})"))
    if a.steps and s.merge.adapters == "none":
        problems.append(source.error(("adapters", "steps"), "adapter steps merge the trainers' adapters, but merge.adapters "
                                                            "is none: use fedavg, ffa or stack, or steps 0"))
    if a.steps and a.staleness == "compensate":
        problems.append(source.error(("adapters", "steps"), "compensate measures drift within one task message; with adapter "
                                                            "steps use staleness keep"))
    if a.until_round is not None and not a.steps:
        problems.append(source.error(("adapters", "until_round"), "the round limit applies to adapter steps: set "
                                                                  "adapters.steps (1 or more), or until_round null"))
    if a.classifier == "federation" and not a.steps:
        problems.append(source.error(("adapters", "classifier"), "the federation's classes reach a trainer between adapter "
                                                                 "steps: set adapters.steps (2 or more), or classifier task"))
    if a.staleness == "compensate" and s.merge.head == "ridge":
        problems.append(source.error(("adapters", "staleness"), "compensate cannot move the ridge head's random-feature "
                                                                "statistics: use keep, or head ncm or lda"))
    return problems


def method_checks(s: Scenario, source: SourceMap) -> list[str]:
    """``fedavg_finetune`` trains its own head: the keys of the prototype heads and
    adapters do not apply, and are refused rather than silently ignored."""
    if s.merge.method == "prototypes":
        if "finetune" in s.model_fields_set:
            return [source.error(("finetune",), "used only by merge.method fedavg_finetune; remove it")]
        return []
    problems = []
    for key in ("prototypes", "head", *HEAD_KEYS):
        # a default written out (shipped scenarios say head: ncm) changes nothing; another value would be ignored
        if getattr(s.merge, key) != MergeConfig.model_fields[key].default:
            problems.append(source.error(("merge", key), "not used by merge.method fedavg_finetune (a linear head "
                                                         "trained with cross-entropy); remove it"))
    if s.adapters.active:
        problems.append(source.error(("adapters", "schedule"), "fedavg_finetune trains the whole backbone: "
                                                               "adapters.schedule must be frozen"))
    if s.evaluation.where == "clients":
        problems.append(source.error(("evaluation", "where"), "clients do not score fedavg_finetune models: use server"))
    entry = BACKBONES.get(s.model.backbone)
    if entry is not None and entry.weights == "none":
        trainable = ", ".join(name for name, e in BACKBONES.items() if e.weights != "none")
        problems.append(source.error(("model", "backbone"), f"{s.model.backbone} has no weights to fine-tune; use {trainable}"))
    return problems
