"""A site folder's samples (fedrecon.data.sites): keyed by content, in a stable order, read as `predict` reads them."""

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from fedrecon.data.dataset import DataError
from fedrecon.data.omniglot import resize_ink
from fedrecon.data.sites import SiteData
from fedrecon.model.inputs import read_image
from tests.conftest import DATA_ROOT


@pytest.fixture(scope="module")
def drawings():
    """Three drawings of each of three Omniglot characters (True = white background)."""
    with np.load(DATA_ROOT / "omniglot" / "images_evaluation.npz") as npz:
        return npz["images"][[0, 5, 9], :3].copy()


@pytest.fixture(scope="module")
def clinc_rows():
    """12 training sentences of each of two CLINC150 intents (some with commas and quotes)."""
    items = json.loads((DATA_ROOT / "clinc150" / "data_full.json").read_text())["train"]
    return [r for r in items if r[1] == "translate"][:12] + [r for r in items if r[1] == "timer"][:12]


def image_site(folder, drawings, mode="1"):
    """``folder/train/c<k>/<n>.png`` for the drawings, saved as PNG in PIL ``mode``."""
    for k, chars in enumerate(drawings):
        (folder / "train" / f"c{k}").mkdir(parents=True)
        for n, drawing in enumerate(chars):
            Image.fromarray(drawing).convert(mode).save(folder / "train" / f"c{k}" / f"{n}.png")
    return folder


def csv_site(folder, rows, name="train.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / name).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows([[label, text] for text, label in rows])
    return folder


def digest(label, content: bytes):
    return hashlib.sha256(label.encode() + b"\0" + content).hexdigest()[:32]


def test_image_samples_are_keyed_by_content_sorted_and_stable_across_calls_and_copies(tmp_path, drawings):
    # Prepare
    site = image_site(tmp_path / "site", drawings)
    # Execute
    first = SiteData(site, "ink").samples()
    again = SiteData(site, "ink").samples()
    copy = shutil.copytree(site, tmp_path / "elsewhere" / "copy")
    copied = SiteData(copy, "ink").samples()
    # Assert: every file once, by (label, source), each key the hash of its label and bytes
    assert [(s.label, s.source) for s in first] == [(f"c{k}", f"train/c{k}/{n}.png") for k in range(3) for n in range(3)]
    assert [s.key for s in first] == [digest(s.label, (site / s.source).read_bytes()) for s in first]
    assert len({s.key for s in first}) == 9
    assert again == first and copied == first


def test_a_renamed_file_keeps_its_key_and_a_relabelled_one_gets_a_new_one(tmp_path, drawings):
    # Prepare
    site = image_site(tmp_path / "site", drawings)
    before = {s.source: s.key for s in SiteData(site, "ink").samples()}
    # Execute
    (site / "train/c0/0.png").rename(site / "train/c0/renamed.png")
    (site / "train/c1/0.png").rename(site / "train/c2/moved.png")
    after = {s.source: s.key for s in SiteData(site, "ink").samples()}
    # Assert
    assert after["train/c0/renamed.png"] == before["train/c0/0.png"]
    assert after["train/c2/moved.png"] != before["train/c1/0.png"]
    assert len(after) == 9


def test_a_duplicate_file_is_a_second_sample_keyed_with_its_rank(tmp_path, drawings):
    # Prepare
    site = image_site(tmp_path / "site", drawings)
    shutil.copy(site / "train/c1/2.png", site / "train/c1/9.png")
    shutil.copy(site / "train/c1/2.png", site / "train/c0/9.png")  # same bytes, another class: another sample
    # Execute
    samples = {s.source: s.key for s in SiteData(site, "ink").samples()}
    # Assert
    assert samples["train/c1/9.png"] == samples["train/c1/2.png"] + "#2"
    assert samples["train/c0/9.png"] == digest("c0", (site / "train/c0/9.png").read_bytes())
    assert len(set(samples.values())) == 11


@pytest.mark.parametrize("name", ["3.png", "0-first.png"])
def test_adding_a_file_adds_exactly_one_new_sample(tmp_path, drawings, name):
    # Prepare: a new drawing, and a copy of an existing one (sorting last, or first: the ranks move, the set grows by one)
    site = image_site(tmp_path / "site", drawings)
    before = {s.key for s in SiteData(site, "ink").samples()}
    with np.load(DATA_ROOT / "omniglot" / "images_evaluation.npz") as npz:
        Image.fromarray(npz["images"][0, 7]).save(site / "train/c0/new.png")
    shutil.copy(site / "train/c2/1.png", site / "train/c2" / name)
    # Execute
    after = SiteData(site, "ink").samples()
    # Assert
    added = [s for s in after if s.key not in before]
    assert len(after) == 11 and {s.key for s in after} >= before
    assert sorted(s.key.partition("#")[0] for s in added) == sorted(
        [digest("c0", (site / "train/c0/new.png").read_bytes()), digest("c2", (site / "train/c2/1.png").read_bytes())])


@pytest.mark.parametrize("mode", ["1", "L"])
def test_an_ink_png_is_read_as_predict_reads_it_and_as_the_loader_prepared_the_drawing(tmp_path, drawings, mode):
    # Prepare
    site = image_site(tmp_path / "site", drawings, mode)
    data = SiteData(site, "ink", image_size=28)
    samples = data.samples()
    # Execute
    inputs = data.inputs(samples)
    # Assert
    assert inputs.shape == (9, 1, 28, 28) and inputs.dtype == np.float32
    for s, x in zip(samples, inputs):
        np.testing.assert_array_equal(x, read_image(site / s.source, {"kind": "ink", "image_size": 28}))
    np.testing.assert_array_equal(inputs, resize_ink(~drawings.reshape(9, 105, 105), 28))
    assert data.inputs([]).shape == (0, 1, 28, 28)


def test_an_rgb_site_gives_uint8_pixels_in_the_order_asked(tmp_path, drawings):
    site = image_site(tmp_path / "site", drawings, "RGB")
    data = SiteData(site, "rgb", image_size=16)
    samples = data.samples()[::-1]
    inputs = data.inputs(samples)
    assert inputs.shape == (9, 3, 16, 16) and inputs.dtype == np.uint8
    np.testing.assert_array_equal(inputs[0], read_image(site / samples[0].source, {"kind": "rgb", "image_size": 16}))


def test_hidden_files_and_folders_are_no_samples_and_test_is_optional(tmp_path, drawings):
    # Prepare: the node's own state folder, a hidden class and a hidden file
    site = image_site(tmp_path / "site", drawings)
    (site / ".fedrecon").mkdir()
    (site / ".fedrecon" / "ledger-ab.json").write_text("{}")
    shutil.copytree(site / "train/c0", site / "train/.trash")
    (site / "train/c1/.DS_Store").write_bytes(b"\0\1")
    (site / "train/.notes").write_text("not a class")
    data = SiteData(site, "ink")
    # Execute, Assert
    assert len(data.samples()) == 9
    assert data.samples("test") == []
    image_site(tmp_path / "other", drawings[:1])
    shutil.copytree(tmp_path / "other" / "train", site / "test")
    assert [(s.label, s.source) for s in data.samples("test")] == [("c0", f"test/c0/{n}.png") for n in range(3)]


def test_csv_rows_are_keyed_by_label_and_text_at_their_line(tmp_path, clinc_rows):
    # Prepare: rows of two intents interleaved, so that order is by label, then line (as a number)
    rows = [r for pair in zip(clinc_rows[12:], clinc_rows[:12]) for r in pair]
    site = csv_site(tmp_path / "site", rows)
    data = SiteData(site, "text")
    # Execute
    samples = data.samples(classes=["timer", "translate", "weather"])
    texts = data.inputs(samples)
    # Assert
    lines = {s.source: s for s in samples}
    assert [s.label for s in samples] == ["timer"] * 12 + ["translate"] * 12
    assert [int(s.source.split(":")[1]) for s in samples] == list(range(2, 26, 2)) + list(range(3, 27, 2))
    assert lines["train.csv:3"].key == digest("translate", clinc_rows[0][0].encode())
    assert texts.dtype == object and list(texts) == [t for t, _ in clinc_rows[12:] + clinc_rows[:12]]


def test_jsonl_gives_the_csv_keys_and_a_repeated_row_its_rank(tmp_path, clinc_rows):
    # Prepare: the same rows as JSONL (a blank line, other columns), one row twice
    site = tmp_path / "site"
    site.mkdir()
    lines = [json.dumps({"utterance": t, "intent": lab, "id": k}) for k, (t, lab) in enumerate(clinc_rows)]
    (site / "train.jsonl").write_text("\n".join(lines[:3] + [""] + lines[3:] + [lines[0]]) + "\n")
    from_csv = SiteData(csv_site(tmp_path / "csv", clinc_rows), "text").samples()
    # Execute
    samples = SiteData(site, "text", text_column="utterance", label_column="intent").samples()
    # Assert
    assert [s.key for s in samples if s.source != "train.jsonl:26"] == [s.key for s in from_csv]
    assert {s.source: s.key for s in samples}["train.jsonl:26"] == from_csv[-12].key + "#2"
    assert samples[12].source == "train.jsonl:1" and samples[15].source == "train.jsonl:5"


def test_a_csv_row_over_two_lines_is_named_by_its_first_and_a_byte_order_mark_is_no_column(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "train.csv").write_text('\ufefflabel,text\ntimer,"set a timer,\nplease"\ntimer,after\n', encoding="utf-8")
    data = SiteData(site, "text")
    samples = data.samples()
    assert [s.source for s in samples] == ["train.csv:2", "train.csv:4"]
    assert list(data.inputs(samples)) == ["set a timer,\nplease", "after"]

def _bad_image(site, drawings, spoil):
    image_site(site, drawings)
    spoil(site)
    return SiteData(site, "ink")


def _bad_text(site, name, content: bytes, also=None):
    site.mkdir()
    (site / name).write_bytes(content)
    if also:
        (site / also).write_bytes(b"")
    return SiteData(site, "text")


CSV = b"label,text\ntimer,set a timer\n"
BAD = {  # site -> (the SiteData, the file the error names, then what it says)
    "no folder": (lambda s, d: SiteData(s / "nope", "ink"), "nope: no such site folder"),
    "no train part": (lambda s, d: _bad_image(s, d, lambda s: shutil.rmtree(s / "train")),
                      ": no training samples (expected train/<class>/<image> files)"),
    "no train file": (lambda s, d: _bad_text(s, "test.csv", CSV), ": no training samples (expected train.csv or train.jsonl"),
    "both train files": (lambda s, d: _bad_text(s, "train.csv", CSV, also="train.jsonl"), ": both train.csv and train.jsonl"),
    "file in train/": (lambda s, d: _bad_image(s, d, lambda s: shutil.copy(s / "train/c0/0.png", s / "train/loose.png")),
                       "/train/loose.png: a file directly in train/"),
    "not an image": (lambda s, d: _bad_image(s, d, lambda s: (s / "train/c0/notes.txt").write_text("hi")),
                     "/train/c0/notes.txt: not an image file (allowed in a class folder: .png"),
    "a folder in a class": (lambda s, d: _bad_image(s, d, lambda s: (s / "train/c0/sub").mkdir()), "/train/c0/sub: not an image file"),
    "empty class": (lambda s, d: _bad_image(s, d, lambda s: (s / "train/c3").mkdir()), "/train/c3: no images"),
    "header only": (lambda s, d: _bad_text(s, "train.csv", b"label,text\n"), "/train.csv: no rows"),
    "empty csv": (lambda s, d: _bad_text(s, "train.csv", b""), "/train.csv: empty; a CSV file starts with a header row"),
    "missing column": (lambda s, d: _bad_text(s, "train.csv", b"label,body\ntimer,x\n"), "/train.csv:2: no column 'text'; columns: label, body"),
    "empty label": (lambda s, d: _bad_text(s, "train.csv", CSV + b" ,hello\n"), "/train.csv:3: column 'label' is empty"),
    "extra field": (lambda s, d: _bad_text(s, "train.csv", CSV + b"timer,a,b\n"), "/train.csv:3: 3 fields, the header row has 2"),
    "not utf-8": (lambda s, d: _bad_text(s, "train.csv", CSV + b"timer,caf\xe9\n"), "/train.csv:3: not UTF-8 text"),
    "invalid json": (lambda s, d: _bad_text(s, "train.jsonl", b'{"text": "a", "label": "b"}\n{"text": \n'), "/train.jsonl:2: not valid JSON"),
    "json not an object": (lambda s, d: _bad_text(s, "train.jsonl", b'["a", "b"]\n'), "/train.jsonl:1: a line must be a JSON object"),
    "empty json text": (lambda s, d: _bad_text(s, "train.jsonl", b'{"text": "a", "label": "b"}\n\n{"text": "", "label": "b"}\n'),
                        "/train.jsonl:3: column 'text' is empty"),
    "null json label": (lambda s, d: _bad_text(s, "train.jsonl", b'{"text": "a", "label": null}\n'),
                        "/train.jsonl:1: column 'label' must be a string, got null"),
}


@pytest.mark.parametrize("case", BAD)
def test_each_bad_site_is_one_line_naming_the_file(tmp_path, drawings, case):
    build, expected = BAD[case]
    data = build(tmp_path / "site", drawings)
    with pytest.raises(DataError) as err:
        data.samples()
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path)) and expected in message, message


def test_an_unreadable_or_changed_image_is_refused_naming_it_when_read(tmp_path, drawings):
    # Prepare: a listed site, then one PNG truncated (its key no longer matches) and one not a PNG at all
    site = image_site(tmp_path / "site", drawings)
    data = SiteData(site, "ink")
    samples = data.samples()
    broken = site / "train/c0/1.png"
    broken.write_bytes(broken.read_bytes()[:40])
    # Execute, Assert
    with pytest.raises(DataError, match=f"^{broken}: changed since its samples were listed"):
        data.inputs(samples)
    with pytest.raises(DataError, match=f"^{broken}: not a readable image") as err:
        data.inputs(data.samples())
    assert "\n" not in str(err.value)
    (site / "train/c0/1.png").unlink()
    with pytest.raises(DataError, match="train/c0/1.png: changed since"):
        data.inputs(samples)


def test_a_changed_row_is_refused_when_read(tmp_path, clinc_rows):
    site = csv_site(tmp_path / "site", clinc_rows[:3])
    data = SiteData(site, "text")
    samples = data.samples()
    csv_site(site, clinc_rows[1:4])
    with pytest.raises(DataError, match=f"^{site}/train.csv:2: changed since"):
        data.inputs(samples)


def test_a_label_outside_the_vocabulary_is_refused_naming_file_line_and_label(tmp_path, drawings, clinc_rows):
    # Prepare
    images = image_site(tmp_path / "images", drawings)
    text = csv_site(tmp_path / "text", clinc_rows[10:14])
    vocabulary = ["c0", "c1", "a", "b", "c", "d", "e"]
    # Execute, Assert
    with pytest.raises(DataError) as err:
        SiteData(images, "ink").samples(classes=vocabulary)
    assert str(err.value) == f"{images}/train/c2/0.png: class 'c2' is not one of the scenario's 7 classes ('c0', 'c1', 'a', 'b', 'c', ..)"
    with pytest.raises(DataError, match=f"^{text}/train.csv:4: class 'timer' is not one of the scenario's 1 classes \\('translate'\\)$"):
        SiteData(text, "text").samples(classes=["translate"])
    assert len(SiteData(images, "ink").samples("test", classes=[])) == 0
    assert len(SiteData(images, "ink").samples(classes=["c2", "c1", "c0"])) == 9
