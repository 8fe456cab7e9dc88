"""Episodic prototypical-loss training of a backbone on Omniglot's background set."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedrecon.backbones.embed import build_backbone, embed, pick_device
from fedrecon.data.omniglot import load_omniglot


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of ``fedrecon pretrain`` (defaults follow Snell et al., 2017)."""

    data_root: str
    backbone: str = "conv4"
    image_size: int = 28
    episodes: int = 20000
    ways: int = 60
    shots: int = 5
    queries: int = 15
    lr: float = 1e-3
    lr_halve_every: int = 5000
    rotations: bool = True
    seed: int = 0
    device: str = "auto"


def prototypical_loss(features: torch.Tensor, ways: int, shots: int, queries: int) -> tuple[torch.Tensor, float]:
    """Loss and accuracy of one episode; rows are grouped class by class, supports first."""
    feats = features.view(ways, shots + queries, -1)
    prototypes = feats[:, :shots].mean(1)
    query = feats[:, shots:].reshape(ways * queries, -1)
    logits = -torch.cdist(query, prototypes).pow(2)
    target = torch.arange(ways, device=features.device).repeat_interleave(queries)
    loss = F.cross_entropy(logits, target)
    acc = (logits.argmax(1) == target).float().mean().item()
    return loss, acc


def _class_bank(cfg: PretrainConfig) -> torch.Tensor:
    """``(classes, drawings, 1, H, W)``; rotations by 90, 180, 270 degrees are new classes."""
    ds = load_omniglot(cfg.data_root, "background", cfg.image_size)
    per_class = len(ds.labels) // ds.num_classes
    bank = torch.from_numpy(np.array(ds.inputs)).view(ds.num_classes, per_class, 1, cfg.image_size, cfg.image_size)
    if cfg.rotations:
        bank = torch.cat([torch.rot90(bank, k, dims=(3, 4)) for k in range(4)])
    return bank


def nearest_prototype_accuracy(model, root: str, classes: int, train: int, test: int, image_size: int, device) -> float:
    """Nearest-class-mean accuracy on the first ``classes`` evaluation classes (a sanity check)."""
    ds = load_omniglot(root, "evaluation", image_size)
    idx = ds.class_indices()[:classes]
    train_idx = np.concatenate([i[:train] for i in idx])
    test_idx = np.concatenate([i[train : train + test] for i in idx])
    f_train = embed(model, ds.inputs[train_idx], device)
    f_test = embed(model, ds.inputs[test_idx], device)
    protos = f_train.reshape(classes, train, -1).mean(1)
    d = ((f_test[:, None, :] - protos[None]) ** 2).sum(-1)
    return float((d.argmin(1) == np.repeat(np.arange(classes), test)).mean())


def pretrain(cfg: PretrainConfig, out: str | Path, log=print) -> dict:
    """Train, write the checkpoint (state dict + config + metrics) to ``out``, return the metrics."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    bank = _class_bank(cfg).to(device)
    n_classes, per_class = bank.shape[:2]
    if cfg.ways > n_classes or cfg.shots + cfg.queries > per_class:
        raise ValueError(f"episodes of {cfg.ways} ways x {cfg.shots + cfg.queries} drawings do not fit {n_classes} x {per_class}")
    model = build_backbone(cfg.backbone).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_halve_every, gamma=0.5)
    start = time.time()
    model.train()
    recent: list[float] = []
    for episode in range(1, cfg.episodes + 1):
        classes = torch.from_numpy(rng.choice(n_classes, cfg.ways, replace=False)).to(device)
        drawings = torch.from_numpy(
            np.stack([rng.choice(per_class, cfg.shots + cfg.queries, replace=False) for _ in range(cfg.ways)])
        ).to(device)
        x = bank[classes[:, None], drawings].flatten(0, 1)
        loss, acc = prototypical_loss(model(x), cfg.ways, cfg.shots, cfg.queries)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        recent.append(acc)
        if episode % 500 == 0 or episode == cfg.episodes:
            log(f"episode {episode}/{cfg.episodes}  train acc {np.mean(recent):.3f}  {time.time() - start:.0f}s")
            recent = []
    seconds = time.time() - start
    model.eval()
    metrics = {
        "seconds": round(seconds, 1),
        "device": str(device),
        "ncm_accuracy_100_classes": nearest_prototype_accuracy(model, cfg.data_root, 100, 15, 5, cfg.image_size, device),
        "ncm_accuracy_600_classes": nearest_prototype_accuracy(model, cfg.data_root, 600, 15, 5, cfg.image_size, device),
    }
    config = asdict(cfg)
    config.pop("data_root")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": config, "metrics": metrics}, out)
    out.with_suffix(".json").write_text(json.dumps({"config": config, "metrics": metrics}, indent=2) + "\n")
    log(json.dumps(metrics))
    return metrics
