"""Writing a model folder from what a run learned: the merged statistics' head, the
backbone (adapter folded in), the class names and the preprocessing.

The head is built by :func:`fedrecon.learning.heads.build_head` from the statistics the
server scored (released ones under differential privacy, as the scoring builds it), and
written as the parameters its ``scores`` reads; nothing is refitted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fedrecon.dp import released
from fedrecon.learning.heads import build_head
from fedrecon.learning.prototype_merges import is_per_client, make_policy
from fedrecon.learning.stats import ClassStats
from fedrecon.model.encoder import TOKENIZER_FILE, backbone_files, tokenizer_text
from fedrecon.model.folder import ModelError, replacing, seal, write_arrays
from fedrecon.model.inputs import preprocessing_of
from fedrecon.model.model import HEAD_FILE
from fedrecon.model.unknown import UNKNOWN_FILE, unknown_parameters


class ClassNames:
    """``class_names`` and ``groups`` indexed by class id, as
    :func:`fedrecon.model.export.write_model` reads them from a run's dataset.

    A site node, and the server of a site run, has no dataset of every class: it has the
    class names the sites sent, for the classes the merged model holds. Its groups are all
    ``group`` ("site"): sites send no groups. Ids without a name hold ``""`` (write_model reads only the
    head's ids, every one of which :meth:`NodeModel.update` checks has a name).
    """

    def __init__(self, names: Mapping[int, str], group: str = "site"):
        size = max(names, default=-1) + 1
        self.class_names = tuple(names.get(i, "") for i in range(size))
        self.groups = (group,) * size


def refusal(scenario) -> str | None:
    """Why a run of ``scenario`` has no single classifier to export (None: it has one)."""
    if scenario.merge.method == "fedavg_finetune":
        return "a fedavg_finetune run's model is a fine-tuned network, not a head on merged statistics: not exported yet"
    if is_per_client(make_policy(scenario.merge.prototypes)):
        return f"merge.prototypes {scenario.merge.prototypes}: every client keeps its own head, there is no federated model"
    return None


def _readable(folder: Path) -> None:
    """Files as the user's umask makes new files (safetensors writes its own 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


def write_model(out: str | Path, *, scenario, dataset, stats: ClassStats, model, adapted, entry, dim: int,
                run: dict, scenario_text: str, unknown_threshold: float | None = None,
                unknown_chosen: dict | None = None) -> dict:
    """Write the model folder ``out`` and return its manifest.

    Parameters
    ----------
    out : str or Path
        The model folder: a new folder, or one an earlier export wrote (replaced whole).
    scenario : Scenario
        The scenario as run (head, seed, data section, backbone).
    dataset : ClassDataset
        The run's dataset: its class names and groups.
    stats : ClassStats
        The merged statistics of the exported round.
    model, adapted, entry, dim :
        The run's backbone (:class:`server.prepare.Prepared`'s fields), the server's
        adapted copy holding the merged adapter (or None), its entry and feature size.
    run : dict
        Provenance for the manifest: ``run`` (folder), ``round``, ``rounds``, ``accuracy``.
    scenario_text : str
        The scenario as run (JSON), kept beside the model for reference.
    unknown_threshold : float, optional
        Inputs whose unknown-input score (:mod:`fedrecon.model.unknown`) is above it are
        labelled ``unknown``; None: every input gets a class.
    unknown_chosen : dict, optional
        How the threshold was chosen (by the federation: its quantile and samples counted),
        kept in the manifest beside it.
    """
    why = refusal(scenario)
    if why:
        raise ModelError(why)
    if len(stats) == 0:
        raise ModelError(f"round {run.get('round')}: the federation has learned no class yet; nothing to export")
    if scenario.privacy.dp is not None:
        stats = released(stats)  # as the server's scoring builds its head from noisy statistics
    head = build_head(stats, scenario.merge, scenario.seed)
    arrays, settings = head.parameters()
    unknown, unknown_arrays = unknown_parameters(stats, head, scenario.merge.shrinkage)
    installed = entry.weights == "installed" and scenario.model.checkpoint is None
    backbone, weight_files = backbone_files(scenario.model.backbone, entry, model, adapted, installed, dim)
    classes = [{"id": int(c), "name": dataset.class_names[int(c)], "group": dataset.groups[int(c)]} for c in head.ids]
    with replacing(Path(out)) as tmp:  # renamed to out once whole
        write_arrays(tmp / HEAD_FILE, arrays)
        write_arrays(tmp / UNKNOWN_FILE, unknown_arrays)
        for name, weights in weight_files.items():
            write_arrays(tmp / name, weights)
        (tmp / "scenario.json").write_text(scenario_text.rstrip("\n") + "\n")
        # a site's samples are read as its scenario's sites section says, a dataset's as its loader does
        preprocessing = scenario.sites.preprocessing() if scenario.sites is not None else \
            preprocessing_of(scenario.data, entry.modality)
        tokenizer = tokenizer_text(model)
        if tokenizer is not None:
            (tmp / TOKENIZER_FILE).write_text(tokenizer, encoding="utf-8")
            preprocessing["tokenizer"] = TOKENIZER_FILE
        _readable(tmp)
        manifest = seal(tmp, {
            "scenario": scenario.name, **run, "classes": classes,
            "head": {"kind": scenario.merge.head, **settings},
            "unknown": {"kind": unknown, "threshold": unknown_threshold, **(unknown_chosen or {})},
            "backbone": backbone,
            "preprocessing": preprocessing,
        })
    return manifest
