"""Write a benchmark's section into docs/benchmarks.md between its markers."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every table here is written by the script named in its section; rerun the command to
reproduce it. Unless a section says otherwise, numbers come from a 2-core CPU machine
(no GPU) and timings vary with load.
"""


def write_section(name: str, text: str, path: Path = DOC) -> Path:
    """Replace (or append) the section ``name`` of ``path`` (docs/benchmarks.md) with ``text``."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    doc = path.read_text() if path.is_file() else HEADER
    block = f"{start}\n{text.strip()}\n{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(exist_ok=True)
    path.write_text(doc if doc.endswith("\n") else doc + "\n")
    return path
