"""Omniglot from the shared npz files and from the official PNG layout."""

import numpy as np
import pytest

from fedrecon.data.dataset import DataError
from fedrecon.data.omniglot import load_omniglot, load_omniglot_png
from tests.conftest import DATA_ROOT

SMALL_ZIP = DATA_ROOT / "omniglot" / "images_background_small1.zip"


def test_evaluation_set_shape_groups_and_ink(evaluation_set):
    ds = evaluation_set
    assert ds.num_classes == 659
    assert ds.inputs.shape == (659 * 20, 1, 28, 28)
    assert ds.inputs.dtype == np.float32
    assert 0.0 <= ds.inputs.min() and ds.inputs.max() <= 1.0
    # Ink is 1 and sparse: a drawing covers a small part of the page.
    assert 0.02 < ds.inputs.mean() < 0.3
    assert len(set(ds.groups)) == 20
    assert all(len(idx) == 20 for idx in ds.class_indices())
    assert ds.class_names[0].startswith(ds.groups[0] + "/character01")


def test_background_set_has_30_alphabets():
    ds = load_omniglot(DATA_ROOT, "background", 28)
    assert ds.num_classes == 964
    assert len(set(ds.groups)) == 30


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        load_omniglot(tmp_path, "evaluation")


def test_unknown_subset_is_refused():
    with pytest.raises(DataError, match="background"):
        load_omniglot(DATA_ROOT, "test")


def test_png_zip_matches_the_npz_pixel_for_pixel():
    png = load_omniglot_png(SMALL_ZIP, image_size=105)
    assert png.num_classes == 136
    assert len(set(png.groups)) == 5
    npz = load_omniglot(DATA_ROOT, "background", 105)
    position = {name: i for i, name in enumerate(npz.class_names)}
    png_idx, npz_idx = png.class_indices(), npz.class_indices()
    for c, name in enumerate(png.class_names):
        a = png.inputs[png_idx[c]]
        b = npz.inputs[npz_idx[position[name]]]
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_png_folder_layout(tmp_path):
    import zipfile

    with zipfile.ZipFile(SMALL_ZIP) as zf:
        members = [n for n in zf.namelist() if "/Balinese/character0" in n]
        zf.extractall(tmp_path, members)
    ds = load_omniglot_png(tmp_path / "images_background_small1", image_size=28)
    assert ds.num_classes == 9
    assert set(ds.groups) == {"Balinese"}
    assert ds.inputs.shape == (9 * 20, 1, 28, 28)


def test_png_wrong_layout_is_refused(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="characterNN"):
        load_omniglot_png(tmp_path / "flat")
    with pytest.raises(DataError, match="not found"):
        load_omniglot_png(tmp_path / "nothing.zip")


def test_a_node_cache_keeps_decoded_drawings_and_never_serves_them_stale(tmp_path):
    import os
    import shutil

    from fedrecon.data import omniglot
    from fedrecon.data.cache import DiskCache

    folder = tmp_path / "data" / "omniglot"
    folder.mkdir(parents=True)
    for name in ("alphabets.csv", "images_evaluation.npz"):
        shutil.copy(DATA_ROOT / "omniglot" / name, folder)
    cache = DiskCache(tmp_path / "cache")
    first = omniglot.load_omniglot(folder, "evaluation", 28, cache).inputs
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    omniglot._load_cached.cache_clear()  # as a new process would
    again = omniglot.load_omniglot(folder, "evaluation", 28, cache).inputs
    assert isinstance(again, np.memmap)  # read from the cache, not decoded again (its speed: bench/, not a test)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(first, load_omniglot(DATA_ROOT, "evaluation", 28).inputs)
    # another size, or the file changed: another key
    omniglot.load_omniglot(folder, "evaluation", 20, cache).inputs
    os.utime(folder / "images_evaluation.npz", ns=(1, 1))
    omniglot._load_cached.cache_clear()
    omniglot.load_omniglot(folder, "evaluation", 28, cache).inputs
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    # bounded: a small limit keeps only the newest entry
    small = DiskCache(tmp_path / "cache", limit=1000)
    small.array("x" * 24, lambda: np.ones(10))
    assert [p.name for p in (tmp_path / "cache").glob("*.npy")] == ["x" * 24 + ".npy"]


def test_the_docs_dataset_counts_are_the_scripts_output():
    """docs/scenarios.md's per-class counts come from bench/dataset_counts.py, run on the shipped data."""
    from bench.dataset_counts import DOC, section

    doc = DOC.read_text()
    block = doc[doc.index("<!-- bench:datasets -->\n") + len("<!-- bench:datasets -->\n"):doc.index("\n<!-- /bench:datasets -->")]
    assert block == section(DATA_ROOT)
    assert "| hwu64 | test | the official test split | 64 | 1,076 | 3 / 19 / 19 | iot_hue_lighton 3," in block
