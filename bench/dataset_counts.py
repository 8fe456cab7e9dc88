"""Per-class sample counts of every shipped dataset: the "datasets" section of docs/scenarios.md.

    .venv/bin/python bench/dataset_counts.py [--root DIR] [--no-doc]

Reads the data folder as shipped (default: $FEDRECON_DATA, else ../shared/data beside the
repository): Omniglot's background and evaluation arrays, CLINC150's six splits, HWU64's
three. A scenario's shot counts must fit these (tasks.train_shots + tasks.test_shots for
Omniglot, which has no test split of its own; each against its own split for the text
datasets), and fedrecon validate names the classes that fall short.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.docs import write_section  # noqa: E402

DOC = REPO / "docs" / "scenarios.md"
FEWEST = 3  # classes named in the "fewest" column when classes differ in size


def _omniglot(root: Path) -> list[tuple]:
    rows = []
    for subset, use in (("background", "the conv4 backbone's pretraining (data.subset: background)"),
                        ("evaluation", "the classes learned (data.subset: evaluation, the default)")):
        with np.load(root / "omniglot" / f"images_{subset}.npz") as npz:  # reads the labels only
            labels = npz["labels"]
        rows.append(("omniglot", subset, use, Counter(int(c) for c in labels.ravel()), None))
    return rows


def _clinc150(root: Path) -> list[tuple]:
    data = json.loads((root / "clinc150" / "data_full.json").read_text())
    uses = {"train": "training candidates", "val": "not used", "test": "the official test split",
            "oos_train": "not used (out of scope)", "oos_val": "not used (out of scope)", "oos_test": "not used (out of scope)"}
    return [("clinc150", split, use, Counter(intent for _, intent in data[split]), None) for split, use in uses.items()]


def _hwu64(root: Path) -> list[tuple]:
    uses = {"train": "training candidates", "valid": "not used", "test": "the official test split"}
    return [("hwu64", split, use, Counter((root / "hwu64" / split / "label").read_text().split()), None)
            for split, use in uses.items()]


def rows(root: Path) -> list[tuple]:
    """``(dataset, split, what fedrecon uses it for, per-class counts, None)`` for each split."""
    return _omniglot(root) + _clinc150(root) + _hwu64(root)


def _fewest(counts: Counter) -> str:
    if len(set(counts.values())) == 1:
        return "-"
    low = sorted(counts.items(), key=lambda kv: (kv[1], str(kv[0])))[:FEWEST]
    return ", ".join(f"{name} {n}" for name, n in low)


def section(root: Path) -> str:
    """The Markdown table of every split: classes, samples, per-class min / median / max."""
    lines = ["| dataset | split | fedrecon uses it as | classes | samples | per class: min / median / max | fewest |",
             "|---|---|---|---|---|---|---|"]
    for dataset, split, use, counts, _ in rows(root):
        n = sorted(counts.values())
        spread = f"{n[0]} / {np.median(n):g} / {n[-1]}"
        lines.append(f"| {dataset} | {split} | {use} | {len(n)} | {sum(n):,} | {spread} | {_fewest(counts)} |")
    return "\n".join(lines)


def default_root() -> Path:
    return Path(os.environ.get("FEDRECON_DATA") or REPO.parent / "shared" / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=default_root(), help="the data folder (holding omniglot/, clinc150/, hwu64/)")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/scenarios.md as it is")
    args = parser.parse_args()
    text = section(args.root)
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('datasets', text, DOC)}")


if __name__ == "__main__":
    main()
