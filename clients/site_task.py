"""What a site does: learn what its folder holds and it has not learned, keep the merged
model it is sent, and count its test samples that model names right.

A site's folder is the node config's ``site-folder`` (a deployed SuperNode), else the
scenario's ``sites.folders`` entry of this client (simulation); under a one-site policy
(``centralized``) client 0 reads every site's folder. What the node keeps (its ledger, the
merged statistics, the model folder) is in the node config's ``node-folder``, else in
``.fedrecon`` inside its (first) site folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.ledger import Ledger
from clients.learner import frozen_backbone
from clients.node_model import MODEL, NodeModel
from clients.setup import Setup
from clients.site_features import SiteFeatures
from fedrecon import dp
from fedrecon.backbones.embed import pick_device
from fedrecon.backbones.registry import backbone_entry
from fedrecon.data.dataset import DataError
from fedrecon.data.sites import SiteData, SiteSample
from fedrecon.learning.evaluate import scored_heads
from fedrecon.learning.head_cache import HeadCache
from fedrecon.learning.heads import head_spec
from fedrecon.learning.prototype_merges import is_one_site, make_policy
from fedrecon.learning.stats import ClassStats
from fedrecon.model.export import ClassNames

NODE_FOLDER = ".fedrecon"


@dataclass
class Offer:
    """A site task's reply: the statistics (ids: positions in ``names``, or the
    vocabulary's under secure aggregation), its id ("" nothing new) and its samples."""

    stats: ClassStats
    names: list[str]
    task: str
    samples: int


def site_folders(setup: Setup, node_config) -> list[Path]:
    sites = setup.scenario.sites
    given = node_config.get("site-folder")
    if given:
        return [Path(str(given))]
    if is_one_site(make_policy(setup.scenario.merge.prototypes)):
        return [Path(f) for f in sites.folders]
    if not sites.folders:
        raise DataError("this node names no site folder: start its SuperNode with --node-config "
                         "\"site-folder='/path/to/site'\" (the scenario's sites.folders is empty)")
    return [Path(sites.folders[setup.client])]


def node_folder(setup: Setup, node_config) -> Path:
    given = node_config.get("node-folder")
    if given:
        return Path(str(given))
    folders = site_folders(setup, node_config)
    return folders[0] / (NODE_FOLDER if len(folders) == 1 else NODE_FOLDER + "-one-site")


def _sites(setup: Setup, node_config) -> list[SiteData]:
    s = setup.scenario.sites
    return [SiteData(f, s.read, s.image_size, s.text_column, s.label_column) for f in site_folders(setup, node_config)]


def _features(setup: Setup, parts: list[tuple[SiteData, list[SiteSample]]], node_config) -> np.ndarray:
    """The backbone's features of the samples, site by site, in order, kept by key in the
    node folder (:mod:`clients.site_features`): a sample is embedded once."""
    kept = SiteFeatures(node_folder(setup, node_config), setup.backbone_digest, frozen_backbone(setup),
                        pick_device(setup.scenario.model.device))
    blocks = [kept.features(site, samples) for site, samples in parts if samples]
    return np.concatenate(blocks) if blocks else np.zeros((0, 0))


# The head of the merged statistics a node keeps, by scenario, cached by the statistics it is
# built from: its test counts and its threshold counts read the same model (and, in a
# simulation, every site in the process holds the same statistics) without solving it again.
_HEADS: dict[str, HeadCache] = {}


def _head(setup: Setup, stats: ClassStats):
    s = setup.scenario
    key = s.merge.model_dump_json() + f"|{s.seed}|{s.privacy.dp is not None}"
    if key not in _HEADS:
        _HEADS[key] = scored_heads(s, noisy=s.privacy.dp is not None)
    return _HEADS[key].head(stats)


def learned_samples(setup: Setup, node_config, run: str, accepted: list[str]) -> list[tuple[SiteData, list[SiteSample]]]:
    """The samples of this site the federation merged (its ledger's learned keys still in
    its folder, after settling the ``accepted`` task ids), by site."""
    ledger = Ledger(node_folder(setup, node_config), run)
    ledger.settle(accepted)
    s = setup.scenario.sites
    return [(site, [x for x in site.samples("train", s.classes) if x.key in ledger.learned])
            for site in _sites(setup, node_config)]


def score_counts_of(setup: Setup, node_config, run: str, accepted: list[str], score, names: dict[str, int],
                    classes: dict[str, np.ndarray]) -> np.ndarray:
    """The unknown-input threshold's bin counts of this site's learned samples under the
    merged model's ``score`` (an :class:`fedrecon.model.unknown.UnknownScore`), each left
    out of its class mean; ``names``: the merged classes' ids by name."""
    from fedrecon.model.unknown import score_counts

    parts = [(site, [x for x in samples if x.label in names]) for site, samples in learned_samples(setup, node_config, run, accepted)]
    samples = [x for _, part in parts for x in part]
    labels = np.array([names[x.label] for x in samples], dtype=np.int64)
    return score_counts(score.training_scores(_features(setup, parts, node_config), labels, classes))


def learn_offer(setup: Setup, node_config, run: str, accepted: list[str], secure: bool,
                timings: dict | None = None, noise: float | None = None, dim: int = 0) -> Offer:
    """Settle the ledger with the server's accepted tasks, then learn what is new. Under
    secure aggregation the statistics are in the vocabulary's ids; with ``noise``
    (``privacy.dp``: the std the server names) the features are clipped and every class
    of the vocabulary is noised, held or not, new data or not (:func:`noised_offer`)."""
    clock = time.perf_counter()
    s = setup.scenario
    ledger = Ledger(node_folder(setup, node_config), run)
    ledger.settle(accepted)
    sites = _sites(setup, node_config)
    parts = [(site, ledger.new(site.samples("train", s.sites.classes))) for site in sites]
    new = [x for _, samples in parts for x in samples]
    if timings is not None:
        timings["data_s"] = round(time.perf_counter() - clock, 4)
    spec = head_spec(s.merge, s.seed)
    if not new and noise is None:
        return Offer(ClassStats.empty(0), [], "", 0)
    # kept by key: the threshold's count embeds none of them again
    features = _features(setup, parts, node_config) if new else np.zeros((0, dim))
    if noise is not None:
        features = dp.clip_rows(features, s.privacy.dp.clip)
    if timings is not None:
        timings["embed_s"] = round(time.perf_counter() - clock, 4)
    names = list(s.sites.classes) if secure or noise is not None else sorted({x.label for x in new})
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[x.label] for x in new], dtype=np.int64)
    stats = ClassStats.from_features(labels, features, spec)
    task = ledger.offer([x.key for x in new])  # kept before the reply leaves
    if noise is not None:
        return Offer(noised_offer(stats, s, noise, len(names), features.shape[1]), names, task, -1)
    if not secure:
        names = [names[int(i)] for i in stats.ids]
        stats = stats.replace(ids=np.arange(len(names), dtype=np.int64))
    return Offer(stats, names, task, len(new))


def noised_offer(stats: ClassStats, scenario, std: float, classes: int, dim: int) -> ClassStats:
    """``stats`` in every slot of the vocabulary (zeros where the site holds nothing) with
    Gaussian noise of ``std`` on every value (each block scaled by its bound:
    :func:`fedrecon.dp.block_scales`), so that neither a site's statistics nor which classes
    it holds are released beyond the budget."""
    from fedrecon.secagg.layout import Layout

    spec = head_spec(scenario.merge, scenario.seed)
    layout = Layout(tuple(range(classes)), dim, spec.second_moment, spec.random_features)
    full, _, _ = layout.read(layout.vector(stats), tuple(range(classes)))
    return dp.add_noise(ClassStats.from_arrays(full), std, scales=dp.block_scales(spec, scenario.privacy.dp.clip, dim))


def model_writer(setup: Setup, run: dict, threshold: float | None = None, chosen: dict | None = None,
                 floor: float = 0.0):
    """Writes a node's model folder (:func:`fedrecon.model.export.write_model`) from the
    merged statistics, with the federation's unknown threshold (``chosen``: how)."""
    from fedrecon.model.export import write_model
    from fedrecon.scenario.loading import scenario_json

    s = setup.scenario
    model = frozen_backbone(setup)
    entry = backbone_entry(s.model.backbone)

    def write(folder: Path, stats: ClassStats, names: dict[int, str]) -> None:
        held = dp.present(stats, floor)
        if not len(held):  # privacy.dp: no class stands above the noise yet
            return
        write_model(folder, scenario=s, dataset=ClassNames(names), stats=held, model=model, adapted=None, entry=entry,
                    dim=stats.dim, run=run, scenario_text=scenario_json(s), unknown_threshold=threshold,
                    unknown_chosen=chosen)

    return write


def keep_model(setup: Setup, node_config, run: str, delta: dict, names: list[str], base: int, version: int,
               dim: int, unknown: dict | None = None, floor: float = 0.0) -> int:
    """Apply the server's update; the version this node then holds (another than
    ``version``: the update started from a version it does not hold). An update of the
    version held (it came earlier this round, with the threshold's query) brings the
    threshold: the model folder is written again with it."""
    held = _held(setup, node_config, dim, run)
    if held.version != base:
        return held.version
    unknown = dict(unknown or {})
    threshold = unknown.pop("threshold", None)
    write = model_writer(setup, {"run": run, "round": version}, threshold, unknown, floor)
    if base == version:
        if threshold is not None and held.stats is not None:
            write(held.folder / MODEL, held.stats, dict(held.names))
        return held.version
    held.update(delta, dict(zip([int(i) for i in delta["ids"]], names)), base, version, write)
    return held.version


def _held(setup: Setup, node_config, dim: int, run: str) -> NodeModel:
    return NodeModel(node_folder(setup, node_config), dim=dim, run=run, noisy=setup.scenario.privacy.dp is not None)


def kept_score_counts(setup: Setup, node_config, run: str, accepted: list[str], dim: int) -> np.ndarray:
    """The threshold's bin counts of this site's merged samples under the unknown-input
    score of the merged model it keeps (as the server computes it: the same statistics,
    the same code)."""
    from fedrecon.model.unknown import UnknownScore, unknown_parameters

    held, s = _held(setup, node_config, dim, run), setup.scenario
    stats = held.stats
    kind, arrays = unknown_parameters(stats, _head(setup, stats), s.merge.shrinkage)
    classes = {"ids": stats.ids, "counts": stats.counts, "means": stats.means()}
    names = {held.names[int(c)]: int(c) for c in stats.ids}
    return score_counts_of(setup, node_config, run, accepted, UnknownScore(kind, arrays), names, classes)


def test_counts(setup: Setup, node_config, run: str, dim: int, floor: float = 0.0) -> tuple[int, int]:
    """(correct, samples) of the kept model on this site's test part, over the classes it
    knows (under privacy.dp: those whose noisy count passes ``floor``, post-processed)."""
    held = _held(setup, node_config, dim, run)
    if held.stats is None or not len(held.stats):
        return 0, 0
    s = setup.scenario
    stats = dp.present(held.stats, floor)  # (post-processed by the head's cache under privacy.dp)
    if not len(stats):
        return 0, 0
    index = {held.names[int(c)]: int(c) for c in stats.ids}
    parts = [(site, [x for x in site.samples("test", s.sites.classes) if x.label in index]) for site in
             _sites(setup, node_config)]
    samples = [x for _, part in parts for x in part]
    if not samples:
        return 0, 0
    labels = np.array([index[x.label] for x in samples], dtype=np.int64)
    predicted = _head(setup, stats).predict(_features(setup, parts, node_config))
    return int((predicted == labels).sum()), len(samples)
