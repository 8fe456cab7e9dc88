"""Shared fixtures: the real data folder, the committed backbone, scenario writers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("FEDRECON_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
CHECKPOINT = REPO / "checkpoints" / "conv4-omniglot.pt"


def small_scenario(**overrides) -> dict:
    """A 3-client, 12-class Omniglot scenario with absolute paths."""
    scenario = {
        "name": "small",
        "seed": 1,
        "data": {"dataset": "omniglot", "root": str(DATA_ROOT), "subset": "evaluation", "image_size": 28},
        "model": {"backbone": "conv4", "checkpoint": str(CHECKPOINT), "device": "cpu"},
        "clients": {"count": 3},
        "tasks": {"num_classes": 12, "classes_per_task": 2, "train_shots": 5, "test_shots": 5, "arrival": "synchronous"},
        "merge": {"prototypes": "exact"},
    }
    for key, value in overrides.items():
        scenario[key] = value
    return scenario


def scenario_of(**sections):
    """The small scenario as a checked :class:`Scenario`, its sections updated by ``sections``."""
    from fedrecon.scenario import parse_scenario

    raw = small_scenario()
    for key, value in sections.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return parse_scenario(yaml.safe_dump(raw, sort_keys=False), "test.yaml")


@pytest.fixture
def write_scenario(tmp_path):
    def write(content: dict | str, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def evaluation_set():
    from fedrecon.data.omniglot import load_omniglot

    return load_omniglot(DATA_ROOT, "evaluation", 28)


def head_of(name: str, seed: int = 0, **fields):
    """``(merge section, seed)`` of a head, as ``fit_head`` / ``build_head`` / ``head_spec`` take them."""
    from fedrecon.scenario.sections import MergeConfig

    return MergeConfig(head=name, **fields), seed


def dataset_of(name: str, root, **keys):
    """The dataset a ``data`` section with these keys names (paths may be Path objects)."""
    from fedrecon.data.registry import load_dataset
    from fedrecon.scenario.sections import DataConfig

    return load_dataset(DataConfig(dataset=name, root=str(root), **{k: v if isinstance(v, int) else str(v) for k, v in keys.items()}))


SITE_CLASSES = 5  # a test site's classes


@pytest.fixture(scope="session")
def site_folders(tmp_path_factory) -> Path:
    """Three site folders of 5 characters each (5 drawings to learn, 3 to test) and ``later``: 3 more."""
    from fedrecon.data.omniglot_sites import write_sites

    out = tmp_path_factory.mktemp("sites")
    write_sites(DATA_ROOT, out, sites=3, alphabets=1, later=1, train=5, test=3)
    for folder in [*out.glob("site-*"), out / "later"]:
        keep = sorted(p.name for p in (folder / "train").iterdir())[: 3 if folder.name == "later" else SITE_CLASSES]
        for part in ("train", "test"):
            for cls in (folder / part).iterdir():
                if cls.name not in keep:
                    shutil.rmtree(cls)
    return out
