"""Site folders made of Omniglot drawings, to rehearse a site federation on one machine.

Omniglot's evaluation alphabets (which the shipped conv4 backbone never saw) are dealt
to sites, an alphabet's characters to one site, each character's first ``train``
drawers' drawings in ``train/<character>/`` and the next ``test`` drawers' in
``test/<character>/``, as PNG files as the official release has them (black ink on
white). An alphabet kept apart (``--later``) is written to a folder of its own, to be
copied into a site while a run goes on::

    python -m fedrecon.data.omniglot_sites sites/omniglot --root ../shared/data
    cp -r sites/omniglot/later/* sites/omniglot/site-2/      # between two rounds
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from fedrecon.data.dataset import DataError
from fedrecon.paths import layout_missing


def evaluation_alphabets(root: Path) -> list[tuple[str, int, int]]:
    """(alphabet, first row, last row) of the evaluation set's alphabets, rows 0-based in its npz."""
    path = root / "alphabets.csv"
    if not path.is_file():
        raise DataError(layout_missing(str(root), "Omniglot", "omniglot/alphabets.csv"))
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["set"] == "evaluation"]
    return [(r["alphabet"], int(r["first_char_id"]) - 965, int(r["last_char_id"]) - 965) for r in rows]


def _write(images: np.ndarray, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k, drawing in enumerate(images):
        # True is white background in the npz: saved as it looks, ink black
        Image.fromarray(drawing.astype(np.uint8) * 255, mode="L").save(folder / f"{k:02d}.png")


def write_sites(root: str | Path, out: str | Path, sites: int = 3, alphabets: int = 1, later: int = 1,
                train: int = 15, test: int = 5) -> list[Path]:
    """Write ``sites`` site folders (``site-K``), ``alphabets`` alphabets each, and ``later``
    alphabets more in ``out/later``; returns the site folders."""
    root = Path(root)
    root = root / "omniglot" if (root / "omniglot").is_dir() else root
    path = root / "images_evaluation.npz"
    if not path.is_file():
        raise DataError(layout_missing(str(root), "Omniglot evaluation set", "omniglot/images_evaluation.npz"))
    table = evaluation_alphabets(root)
    wanted = sites * alphabets + later
    if wanted > len(table) or train + test > 20:
        raise DataError(f"{wanted} alphabets of {len(table)}, {train}+{test} of 20 drawings: too many")
    with np.load(path) as npz:
        images = npz["images"]
    out = Path(out)
    folders = [out / f"site-{k}" for k in range(sites)] + [out / "later"] * later
    for i, (name, first, last) in enumerate(table[:wanted]):
        site = folders[i // alphabets] if i < sites * alphabets else out / "later"
        for row in range(first, last + 1):
            label = f"{name}-{row - first + 1:02d}"
            _write(images[row, :train], site / "train" / label)
            _write(images[row, train:train + test], site / "test" / label)
    return folders[:sites]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Omniglot site folders for a rehearsal of real sites")
    parser.add_argument("out", help="folder to write site-0, site-1, ... and later/ in")
    parser.add_argument("--root", default="../shared/data", help="the folder holding omniglot/")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--alphabets", type=int, default=1, help="alphabets a site")
    parser.add_argument("--later", type=int, default=1, help="alphabets written to out/later")
    args = parser.parse_args(argv)
    try:
        folders = write_sites(args.root, args.out, args.sites, args.alphabets, args.later)
    except DataError as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote {len(folders)} site folders in {args.out} (and {args.out}/later)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
