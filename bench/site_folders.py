"""The site folders bench/sites.py runs on: Omniglot alphabets and CLINC150 domains.

Each dataset has a writer of three site folders and one of the part held back, which the
bench copies into site 2 while its run goes on."""

from __future__ import annotations

import csv
import os
import shutil
import json
from pathlib import Path

from fedrecon.data.omniglot_sites import write_sites

SITE_DOMAINS, LATER_DOMAIN = [(0,), (1,), (2,)], 3  # CLINC150 domains (domains.json's order)


# --- site folders -----------------------------------------------------------------------

def omniglot_sites(folder: Path, data: Path) -> None:
    write_sites(data, folder, sites=3, alphabets=1, later=1, train=15, test=5)


def omniglot_later(folder: Path, data: Path) -> None:
    for part in ("train", "test"):
        shutil.copytree(folder / "later" / part, folder / "site-2" / part, dirs_exist_ok=True)


def _clinc(data: Path) -> tuple[dict, list[list[str]]]:
    root = data / "clinc150"
    data = json.loads((root / "data_full.json").read_text())
    domains = list(json.loads((root / "domains.json").read_text()).values())
    return data, domains


def _write_csv(path: Path, rows: list[list[str]], append: bool = False) -> None:
    """``rows`` ([text, label]) as a CSV with a header; appending rewrites the file and
    renames it over the old one, so a site never reads half of it."""
    old = list(csv.reader(path.open(newline="", encoding="utf-8")))[1:] if append else []
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(old + rows)
    os.replace(tmp, path)


def _domain_rows(data: dict, domains: list[list[str]], which, part: str) -> list[list[str]]:
    intents = {i for d in which for i in domains[d]}
    return [[text, intent] for text, intent in data[part] if intent in intents]


def clinc_sites(folder: Path, root: Path) -> None:
    data, domains = _clinc(root)
    for k, which in enumerate(SITE_DOMAINS):
        site = folder / f"site-{k}"
        site.mkdir(parents=True)
        for part in ("train", "test"):
            _write_csv(site / f"{part}.csv", _domain_rows(data, domains, which, part))


def clinc_later(folder: Path, root: Path) -> None:
    data, domains = _clinc(root)
    for part in ("train", "test"):
        _write_csv(folder / "site-2" / f"{part}.csv", _domain_rows(data, domains, [LATER_DOMAIN], part), append=True)


DATASETS = {"omniglot": (omniglot_sites, omniglot_later), "clinc150": (clinc_sites, clinc_later)}
