"""The sections of a scenario besides ``tasks``: data, model, clients, merge, adapters,
the fine-tuning baseline, evaluation, checkpoints, simulation and faults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from fedrecon.backbones.registry import BACKBONES
from fedrecon.data.registry import DATASETS
from fedrecon.scenario.base import (PerClientLeave, PerClientProbability, PerClientRound, Round, Strict,
                                    builtin_or_plugin)

HEADS = ("ncm", "lda", "ridge")
ADAPTER_MERGES = ("none", "fedavg", "ffa", "stack")


class DataConfig(Strict):
    """Where the samples come from."""

    dataset: str = Field("omniglot", description=f"{', '.join(DATASETS)} (text: a CSV/TSV/JSONL file; image_folder: "
                                                 "<class>/<image>), or a plug-in loader package.module:attribute (docs/extending.md)")
    root: str = Field("../shared/data", description="data folder; a relative path is taken from the scenario file's folder; "
                                                    "left out: $FEDRECON_DATA, else ../shared/data from the working folder")
    subset: Literal["background", "evaluation"] = Field("evaluation", description="Omniglot set the classes come from")
    image_size: int = Field(28, ge=8, le=512, description="images are resized to this many pixels a side (Omniglot: at most 105)")
    path: str | None = Field(None, description="text: the training file; image_folder: the training folder (relative to the scenario file)")
    test_path: str | None = Field(None, description="text / image_folder: the official test split, same layout; null: none")
    text_column: str | None = Field(None, description="text: column (CSV) or key (JSONL) of the text")
    label_column: str | None = Field(None, description="text: column or key of the class label")
    group_column: str | None = Field(None, description="text: column or key of a class's group (optional)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return builtin_or_plugin(value, list(DATASETS), "dataset")


# data.root left out of a scenario: this variable, else the default from the working folder.
# Not from the scenario file's folder, as a root the file writes is: a default taken from
# wherever the file is would be right for files in one folder only.
DATA_ENV = "FEDRECON_DATA"
DATA_ROOT_RULE = f"data.root left out is ${DATA_ENV}, else ../shared/data from the working folder"


def default_data_root() -> str:
    """Where the data is when a scenario does not say (:data:`DATA_ROOT_RULE`), absolute."""
    return str(Path(os.environ.get(DATA_ENV) or DataConfig.model_fields["root"].default).expanduser().resolve())


class ModelConfig(Strict):
    """The feature extractor clients and server share."""

    backbone: str = Field("conv4", description=f"feature extractor: {', '.join(BACKBONES)}, or a plug-in "
                                               "package.module:attribute (docs/extending.md)")
    checkpoint: str | None = Field(None, description="weights file; relative to the scenario file's folder")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    embedding_cache: str | None = Field(None, description="folder where frozen-backbone features are kept between runs "
                                        "(relative to the scenario file); null: in memory only")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return builtin_or_plugin(value, sorted(BACKBONES), "backbone")


class ClientsConfig(Strict):
    """Who takes part, and when.

    A client is present in round ``r`` when ``join <= r < leave`` and it did not drop
    out that round; of the present clients a seeded ``fraction`` is sampled. A task
    due while a client is away arrives in the next round it is present and sampled.
    """

    count: int = Field(ge=1, le=100_000, description="number of clients")
    join: PerClientRound = Field(1, description="round a client joins; one value for all or a list, one per client")
    leave: PerClientLeave = Field(None, description="first round a client is gone for good; null: it stays to the end")
    dropout: PerClientProbability = Field(0.0, description="probability that a client is away in a round (seeded)")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="fraction of the present clients sampled each round (at least one)")
    edges: int = Field(1, ge=1, le=10_000, description="edge sites: the clients in this many contiguous groups, each group's "
                                                       "statistics summed at its edge, the edges' sums added by the top tier "
                                                       "(exact); 1: one tier")
    edge: int | None = Field(None, ge=0, description="run only this edge's clients (0-based) as a federation of its own; "
                                                     "fedrecon merge adds the edge runs' statistics; null: every client")


class MergeConfig(Strict):
    """How the server merges the clients' class statistics, and the head built from them."""

    method: Literal["prototypes", "fedavg_finetune"] = Field(
        "prototypes", description="prototypes: clients send class statistics, merged by merge.prototypes; fedavg_finetune: a "
                                  "baseline, FedAvg of the backbone and a growing linear head fine-tuned on each task (section finetune)")
    prototypes: str = Field("exact", description="merge policy of the class statistics: exact, fedrecon, fedproto, the "
                                                 "baselines local (no merge) and centralized (one site learns every arrival), "
                                                 "or a plug-in package.module:attribute")
    head: Literal[HEADS] = Field("ncm", description="classifier built from the merged statistics: ncm, lda or ridge")
    metric: Literal["euclidean", "cosine"] = Field("euclidean", description="ncm: distance to the class means")
    shrinkage: float = Field(0.1, ge=0.0, le=1.0, description="lda: weight of the scaled identity in the shared covariance")
    # Best of 1, 10, ..., 1e4 on CLINC150 (0.949) and HWU64 (0.913) with frozen MiniLM: bench/heads.py --sweep.
    ridge_lambda: float = Field(100.0, gt=0.0, description="ridge: regularisation added to the Gram matrix")
    random_features: int = Field(4000, ge=1, le=20_000, description="ridge: random ReLU features (Gram is this squared)")
    adapters: Literal[ADAPTER_MERGES] = Field(
        "none", description="merge policy of the clients' LoRA adapters: none (each keeps its own), fedavg (A and B "
                            "averaged: inexact), ffa (A frozen at a shared seed, B averaged: exact) or stack (ranks stacked and folded: exact)")


class AdaptersConfig(Strict):
    """LoRA adapters the clients fine-tune on their tasks (docs/adapters.md); frozen: none."""

    schedule: Literal["frozen", "first_task", "every_task"] = Field(
        "frozen", description="frozen: no adapter; first_task: a client adapts on its first task, then keeps it; "
                              "every_task: on each task, the later ones at lr_later")
    rank: int = Field(4, ge=1, le=256, description="rank of each adapter")
    alpha: float = Field(8.0, gt=0.0, description="scale of the update is alpha / rank")
    targets: list[str] | None = Field(None, description="module-name substrings to adapt; null: the backbone's default "
                                                        "(conv4: every conv; MiniLM: attention and MLP linears; EfficientNet: pointwise convs)")
    lr: float = Field(1e-3, gt=0.0, description="learning rate (AdamW) of a client's first task")
    lr_later: float = Field(1e-4, gt=0.0, description="every_task: learning rate of the later tasks (slow, so old prototypes stay near)")
    epochs: int = Field(1, ge=1, le=1000, description="passes over a task's samples")
    batch_size: int = Field(32, ge=1, description="samples per step")
    loss: Literal["cross_entropy", "prototypical"] = Field(
        "cross_entropy", description="cosine classifier started at the class means, or distances to the means (of the classes adapters.classifier names)")
    temperature: float = Field(0.1, gt=0.0, description="of the cosine logits")
    classifier: Literal["task", "federation"] = Field(
        "task", description="the classes an adapter step's loss separates: the task's own, or every class the federation "
                            "knows (the previous step's trainers' and the earlier rounds' class means as fixed "
                            "negatives: from the second adapter step of a round nobody learned in before)")
    staleness: Literal["keep", "compensate"] = Field(
        "keep", description="statistics computed under an older adapter: keep them, or move them by the drift the current data shows (SDC)")
    drift_sigma: float = Field(0.5, gt=0.0, description="compensate: width of the Gaussian weighting drifts by distance to a prototype (feature units)")
    mixed_precision: bool = Field(True, description="bf16 autocast when training on a GPU")
    until_round: int | None = Field(None, ge=1, description="the adapter trains only in rounds up to this one, then "
                                                               "freezes for everyone (with adapter steps; null: no limit). "
                                                               "1 in a staggered federation: the first round's clients adapt it")
    features: Literal["adapted", "both"] = Field(
        "adapted", description="what clients summarise and the server scores: the adapted backbone's features, or the "
                               "frozen backbone's and the adapted one's side by side (ADAM; twice the size, and the "
                               "adapter's loss sees only its own half)")
    steps: int = Field(0, ge=0, le=100, description="0: each client trains on its task and summarises it under its own "
                                                    "adapter, in one message; N: the round's trainers first run N federated "
                                                    "adapter steps (epochs each, merged by merge.adapters), then "
                                                    "summarise their tasks under the merged adapter")

    @property
    def active(self) -> bool:
        return self.schedule != "frozen"

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def trained_dim(self, dim: int) -> int:
        """Size of the features the adapter's loss sees, of ``dim``-sized summarised ones
        (``features: both``: the adapted half, the last columns)."""
        return dim // 2 if self.features == "both" else dim

    def lr_for(self, task_number: int, round: int | None = None) -> float:
        """Learning rate of a client's ``task_number``-th task (0-based) in ``round``; 0: no training."""
        if self.until_round is not None and round is not None and round > self.until_round:
            return 0.0
        if self.schedule == "first_task":
            return self.lr if task_number == 0 else 0.0
        if self.schedule == "every_task":
            return self.lr if task_number == 0 else self.lr_later
        return 0.0


class FinetuneConfig(Strict):
    """Training of the ``merge.method: fedavg_finetune`` baseline (each task, on its samples only)."""

    lr: float = Field(1e-4, gt=0.0, description="learning rate (AdamW) of the backbone")
    head_lr: float = Field(1e-2, gt=0.0, description="learning rate of the linear head")
    epochs: int = Field(3, ge=1, le=1000, description="passes over a task's samples")
    batch_size: int = Field(32, ge=1, description="samples per step")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")


class EvaluationConfig(Strict):
    """When and where accuracy (and the open-set AUROC) is measured."""

    every: int = Field(1, ge=1, description="evaluate every N rounds (the last round always)")
    where: Literal["server", "clients"] = Field(
        "server", description="server: the server scores all test samples; clients: each client scores its share and the server adds up the counts"
    )
    open_set: bool = Field(True, description="server: also measure the unknown-input score's AUROC each round (metrics.jsonl "
                                             "open_auroc, oos_auroc), on the test samples of the classes not learned yet; "
                                             "false: skip it (it embeds those samples too)")

    def due(self, server_round: int, last_round: int) -> bool:
        return server_round % self.every == 0 or server_round >= last_round


# what checkpoints.keep: auto lets the kept rounds of a run folder take, in all
KEEP_AUTO_MB = 50


class CheckpointsConfig(Strict):
    """Which rounds' states a run folder keeps: the last always (``checkpoint.npz``, which
    ``fedrecon run --resume`` reads), earlier ones for ``fedrecon export --round N``."""

    keep: Literal["auto", "every", "last"] = Field(
        "auto", description=f"auto: every round while the rounds kept take at most {KEEP_AUTO_MB} MB in all, then the "
                            "last only (a ridge head's Gram alone is 64 MB at 4,000 random features); every: every "
                            "round; last: the last only")


class SimulationConfig(Strict):
    """Flower simulation engine resources for each virtual client."""

    num_cpus: int = Field(1, ge=1, description="CPUs per virtual client")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs (or a fraction) per virtual client")
    ray_address: str | None = Field(None, min_length=1, description="an existing Ray cluster the virtual clients run on: "
                                                                    "its head's host:port (ray start --head prints it) or "
                                                                    "ray://host:port; null: Flower starts Ray on this machine")


class TrackingConfig(Strict):
    """Experiment trackers a run logs to, besides its run folder (optional extras)."""

    mlflow: str | None = Field(None, description="MLflow: a folder (an SQLite store mlflow.db and the artifacts, in it; "
                                                 "relative to the scenario file) or a tracking URI; null: off. "
                                                 "Needs pip install 'fedrecon[mlflow]'")
    experiment: str = Field("fedrecon", min_length=1, description="MLflow experiment the run goes into")
    tensorboard: str | None = Field(None, description="TensorBoard: a folder for event files, one subfolder a run "
                                                      "(relative to the scenario file); null: off. Needs pip install "
                                                      "'fedrecon[tensorboard]'")


class DPConfig(Strict):
    """Differential privacy of the released statistics (docs/privacy.md): clipped features,
    Gaussian noise calibrated to spend ``epsilon`` at ``delta`` over the planned rounds."""

    epsilon: float = Field(gt=0.0, description="privacy budget of the whole run (a sample is the unit)")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the budget's delta")
    clip: float = Field(gt=0.0, description="L2 norm each sample's feature vector is clipped to (MiniLM's are 1)")


class PrivacyConfig(Strict):
    """What the server may learn of each client's statistics (docs/privacy.md)."""

    secure_aggregation: bool = Field(False, description="the server learns only each round's sum of the clients' "
                                                        "statistics (and adapter updates): SecAgg+-style masking, exact")
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="secure aggregation: fraction of a round's clients whose "
                                                             "shares unmask its sum (at least 2); fewer survivors reveal nothing")
    dp: DPConfig | None = Field(None, description="differential privacy of the released statistics; null: none. "
                                                  "Needs pip install 'fedrecon[dp]'")


class FaultInjection(Strict):
    """A client that misbehaves on purpose in one round (for tests and demos)."""

    client: int = Field(ge=0, description="client id")
    round: Round = Field(description="round whose task message carries the fault")
    kind: Literal["raise", "timeout", "garbage", "drop_mid_aggregation"] = Field(
        description="raise: the ClientApp raises; timeout: it answers too late; garbage: it sends NaN statistics "
                    "(under secure aggregation: random bytes); drop_mid_aggregation: secure aggregation only, it shares "
                    "its keys and then sends no masked statistics")
    seconds: float | None = Field(None, gt=0, description="timeout: how long the client stalls; null: faults.reply_timeout + 2")


class FaultsConfig(Strict):
    """What the server does about clients that fail, and faults to inject."""

    reply_timeout: float = Field(600.0, gt=0, description="seconds the server waits for a round's replies, in simulation "
                                                          "and deployment; a client that has not answered by then has failed")
    retries: int = Field(3, ge=0, description="times a failed task is offered again to its client (in its next messages)")
    max_reply_bytes: int | None = Field(None, ge=1024, description="a reply with more bytes of arrays is rejected unread; default: twice what a valid reply to its task holds, plus 1 MB")
    inject: list[FaultInjection] = Field(default_factory=list, description="faults to inject, one per client and round")
