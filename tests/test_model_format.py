"""docs/model.md is enough to read a model folder without fedrecon: its digests and its
heads' and unknown score's formulas, computed here from the files with numpy alone, give
what fedrecon.load_model gives."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedrecon.model import load_model
from tests.test_model_export import exported, runs  # noqa: F401 (fixtures)
from tests.test_strategy import identity  # noqa: F401 (fixture: messages need a run id)


def documented_scores(folder, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(head scores, unknown scores) by docs/model.md's formulas."""
    manifest = json.loads((folder / "manifest.json").read_text())
    head, unknown = load_file(str(folder / "head.safetensors")), load_file(str(folder / "unknown.safetensors"))
    f = features.astype(np.float64)
    kind = manifest["head"]["kind"]
    if kind == "ncm":
        p = head["prototypes"]
        scores = 2 * f @ p.T - (p**2).sum(1) if manifest["head"]["metric"] == "euclidean" else \
            (f / np.linalg.norm(f, axis=1, keepdims=True)) @ p.T
    elif kind == "lda":
        scores = f @ head["weights"] + head["bias"]
    else:
        w = np.random.default_rng([manifest["head"]["seed"], 101]).standard_normal((f.shape[1], manifest["head"]["size"]))
        scores = np.maximum(f @ w, 0) @ head["weights"]
    if manifest["unknown"]["kind"] == "cosine":
        u = 1 - ((f / np.linalg.norm(f, axis=1, keepdims=True)) @ unknown["directions"].T).max(1)
    else:
        g = f - unknown["global_mean"]
        u = (np.einsum("nd,de,ne->n", f, unknown["precision"], f) - 2 * (f @ unknown["weights"] + unknown["bias"]).max(1)
             - np.einsum("nd,de,ne->n", g, unknown["global_precision"], g))
    return scores, u


@pytest.mark.parametrize("kind", ["ncm", "lda", "ridge"])
def test_the_documented_formulas_give_fedrecons_labels_and_scores(kind, exported):  # noqa: F811
    folder = exported[kind]
    model = load_model(folder)
    features = np.random.default_rng(0).normal(size=(20, model.manifest["backbone"]["dim"]))
    scores, unknown = documented_scores(folder, features)
    ids = load_file(str(folder / "head.safetensors"))["ids"]
    assert np.array_equal(ids[scores.argmax(1)], model.head.predict(features))
    np.testing.assert_allclose(unknown, model.unknown.scores(features), rtol=1e-9, atol=1e-9)


def test_the_documented_digests_are_the_manifests(exported):  # noqa: F811
    folder = exported["ncm"]
    manifest = json.loads((folder / "manifest.json").read_text())
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    assert hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest() \
        == manifest["manifest_sha256"]
    assert {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in manifest["files"]} == manifest["files"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*manifest["files"], "manifest.json"])
