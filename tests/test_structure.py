"""The code's shape, as the style guide asks: composition over inheritance, files a reader can hold."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedrecon", "clients", "strategies", "server", "bench", "tests")
MAX_LINES = 300


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def test_no_source_file_is_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources(*PACKAGES) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_no_class_of_the_server_side_derives_from_another_of_ours():
    # torchtune's rule, no implementation inheritance: phases follow a Protocol and compose
    files = sources("strategies", "server")
    ours = {node.name for p in files for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ClassDef)}
    derived = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                derived += [f"{path.name}: {node.name}({base})" for base in bases & ours]
                assert "Strategy" not in bases, f"{path.name}: {node.name} is a Flower Strategy; the run drives the Grid"
    assert not derived


def test_the_run_picks_no_step_by_the_type_of_a_strategy():
    run = (ROOT / "server" / "run.py").read_text()
    assert "isinstance(self.state" not in run and "strategy" not in run.lower().replace("strategies.", "")
