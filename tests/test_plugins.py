"""Plug-ins by import path: docs/extending.md's backbone, dataset and merge policy,
written to a folder outside the repository and run on Flower; mistyped paths get one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA_ROOT, REPO

GUIDE = REPO / "docs" / "extending.md"
BLOCK = re.compile(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", re.S)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    """The guide's files in a fresh folder, and the drawings its dataset reads: the
    first 40 Omniglot evaluation characters, 20 drawings each."""
    from fedrecon.data.omniglot import load_omniglot

    folder = tmp_path_factory.mktemp("plugins")
    for name, code in BLOCK.findall(GUIDE.read_text()):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code)
    (folder / "myfed" / "__init__.py").write_text("")
    ds = load_omniglot(DATA_ROOT, "evaluation", 28)
    keep = ds.labels < 40
    np.savez(folder / "drawings.npz", images=ds.inputs[keep], labels=ds.labels[keep])
    return folder


def fedrecon(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The ``fedrecon`` command run from ``folder``, with it on PYTHONPATH (Ray's workers inherit it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.e2e
def test_the_guides_backbone_dataset_and_policy_run_on_flower(plugins):
    # Execute
    proc = fedrecon(plugins, "run", "myfed.yaml", "--out", "run")
    # Assert
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((plugins / "run" / "summary.json").read_text())
    assert summary["classes_learned"] == 12 and summary["failures"] == 0 and summary["merge"] == "myfed.merge:Decayed"
    # the policy ran: round 1's classes weigh half after round 2, round 2's are whole
    plan = json.loads((plugins / "run" / "plan.json").read_text())
    stats = np.load(plugins / "run" / "stats.npz")
    first = {c for a in plan["arrivals"] if a["round"] == 1 for c in a["classes"]}
    assert plan["rounds"] == 2
    assert {int(c): float(n) for c, n in zip(stats["ids"], stats["counts"])} == {
        c: (5.0 if c in first else 10.0) for a in plan["arrivals"] for c in a["classes"]}
    # the backbone ran on every client: NCM on its features at one site scores the same
    sys.path.insert(0, str(plugins))
    try:
        from fedrecon.learning.heads import NearestMean
        from fedrecon.learning.stats import ClassStats
        from fedrecon.scenario import load_scenario
        from server.prepare import prepare

        prep = prepare(load_scenario(plugins / "myfed.yaml"))
        index = np.concatenate([np.asarray(a.sample_index) for a in prep.plan.arrivals])
        labels = np.concatenate([np.asarray(a.sample_labels) for a in prep.plan.arrivals])
        from fedrecon.backbones.embed import embed

        central = NearestMean(ClassStats.from_features(labels, embed(prep.model, prep.dataset.inputs[index])))
        test, test_labels = prep.plan.test_set(prep.plan.classes_seen(prep.plan.rounds))
        accuracy = float((central.predict(embed(prep.model, prep.dataset.inputs[test])) == test_labels).mean())
    finally:
        sys.path.remove(str(plugins))
    assert summary["final_accuracy"] == pytest.approx(accuracy, abs=1e-12) and accuracy > 0.5


MISTAKES = [
    ("model.backbone=myfed.backbone:RandomConv", "model.backbone: cannot import module 'myfed.backbone'"),
    ("model.backbone=myfed.backbones:RandomConvs", "model.backbone: module 'myfed.backbones' has no attribute 'RandomConvs'"),
    ("model.backbone=torch.nn:Identity", "model.backbone: torch.nn:Identity must map a batch of 2 samples to finite features "
                                         "(2, d), got shape (2, 1, 28, 28)"),
    ("model.backbone=myfed.backbones.RandomConv", "model.backbone: unknown backbone 'myfed.backbones.RandomConv'; allowed: "),
    ("data.dataset=myfed.data:npz", "data.dataset: module 'myfed.data' has no attribute 'npz'"),
    ("merge.prototypes=myfed.merge:Decay", "merge.prototypes: module 'myfed.merge' has no attribute 'Decay'"),
    ("merge.prototypes=myfed.backbones:RandomConv", "merge.prototypes: myfed.backbones:RandomConv makes a RandomConv "
                                                    "without a merge(current, updates) method"),
]


@pytest.fixture(scope="module")
def answers(plugins) -> dict[str, subprocess.CompletedProcess]:
    """What ``fedrecon validate myfed.yaml --set CHANGE`` answers, for every mistake."""
    return {change: fedrecon(plugins, "validate", "myfed.yaml", "--set", change) for change, _ in MISTAKES}


@pytest.mark.parametrize("change, expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_mistyped_plugin_gets_one_line(answers, change, expected):
    proc = answers[change]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"--set {change}:") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_the_guides_error_lines_are_what_validate_prints(answers):
    shown = re.search(r"```\n(--set .*?)```", GUIDE.read_text(), re.S).group(1).strip().splitlines()
    assert len(shown) == 5
    for line in shown:
        change = line.removeprefix("--set ").split(": ", 1)[0]
        assert answers[change].stderr.strip() == line


def test_the_guides_scenario_validates(plugins):
    proc = fedrecon(plugins, "validate", "myfed.yaml")
    assert proc.returncode == 0 and "ok (3 clients, 2 rounds, 6 arrivals)" in proc.stdout, proc.stderr


def test_a_failing_plugin_gets_one_line_and_keeps_its_traceback_for_debug(tmp_path, monkeypatch, capsys):
    # Prepare: a merge policy plug-in whose module fails on import
    from server.cli import main

    (tmp_path / "broken_policy.py").write_text("def helper():\n    raise KeyError('nope')\n\n\nhelper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["validate", str(REPO / "scenarios" / "omniglot-quickstart.yaml"), "--set", "merge.prototypes=broken_policy:P"]
    # Execute
    plain = main(args), capsys.readouterr().err
    debug = main(["--debug", *args]), capsys.readouterr().err
    # Assert: one line by default; under --debug the plug-in's traceback down to its line, then that line
    assert plain[0] == 1 and len(plain[1].strip().splitlines()) == 1 and "Traceback" not in plain[1]
    assert "merge.prototypes: importing module 'broken_policy' failed: KeyError: 'nope'" in plain[1]
    assert debug[0] == 1 and 'broken_policy.py", line 2, in helper' in debug[1]
    assert debug[1].strip().endswith(plain[1].strip())
