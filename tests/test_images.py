"""Image data: loaders (imagefolder made here with Pillow, mnist-5k, digits, fashion-mnist),
encoding by the model folder's image processor, and the federated split carrying pixels."""

import numpy as np
import pytest
import torch

from fedfm.core.errors import ConfigError, DataError
from fedfm.data.federated import build_federated
from fedfm.data.images import (
    FASHION_DIR,
    load_digits,
    load_fashion_mnist,
    load_image_encoder,
    load_imagefolder,
    load_images,
    load_mnist_5k,
)

PIL = pytest.importorskip("PIL.Image")


def write_processor(folder, size=16, channels=3):
    from transformers import ViTImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * channels,
                      image_std=[0.5] * channels).save_pretrained(folder)
    return folder


def make_folder(root, classes=("cat", "dog"), n=3, split=None, size=(10, 12)):
    """Coloured PNG/JPEG files: class k has mean intensity 60 + 120 k."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        d = root / split / name if split else root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(rng.normal(60 + 120 * k, 10, (*size, 3)), 0, 255).astype(np.uint8)
            PIL.fromarray(arr).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
        (d / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return root


def test_imagefolder_flat_and_split(tmp_path):
    flat, none = load_imagefolder(str(make_folder(tmp_path / "flat")))
    assert len(flat) == 6 and flat.label_names == ["cat", "dog"] and none is None
    root = make_folder(tmp_path / "split", n=4, split="train")
    make_folder(root, n=2, split="test")
    train, test = load_imagefolder(str(root))
    assert len(train) == 8 and len(test) == 4 and test.labels == [0, 0, 1, 1]
    enc = load_image_encoder(write_processor(tmp_path / "model", size=16))
    pixels, mask = enc(train.images)
    assert pixels.shape == (8, 3, 16, 16) and mask.shape == (8, 1)
    # the processor normalises with mean = std = 0.5: dark cats < 0 < bright dogs
    assert pixels[:4].mean() < -0.2 and pixels[4:8].mean() > 0.2
    fed = build_federated(train, enc, 2, "iid", seed=0, min_examples=2, test_ds=test)
    assert len(fed.global_test) == 4  # the official test split is the global test set
    torch.testing.assert_close(fed.global_test.input_ids, enc(test.images)[0])
    assert sum(len(c.train) + len(c.test) for c in fed.clients) == 8


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_imagefolder(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="needs data.path"):
        load_images("imagefolder", None)
    root = make_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_imagefolder(str(root))
    root = make_folder(tmp_path / "empty")
    (root / "bird").mkdir()
    with pytest.raises(DataError, match="holds no image"):
        load_imagefolder(str(root))
    bad = make_folder(tmp_path / "bad")
    (bad / "cat" / "broken.png").write_bytes(b"not a png")
    ds, _ = load_imagefolder(str(bad))
    with pytest.raises(DataError, match="cannot be decoded"):
        load_image_encoder(write_processor(tmp_path / "m"))(ds.images)
    with pytest.raises(ConfigError, match="preprocessor_config.json"):
        load_image_encoder(tmp_path / "no-model")


def test_mnist_5k_slice_and_digits(tmp_path):
    ds, test = load_mnist_5k()
    assert len(ds) == 5000 and ds.num_labels == 10 and test is None
    assert np.bincount(ds.labels).min() > 400  # every digit present
    enc = load_image_encoder(write_processor(tmp_path / "model", size=28))
    fed = build_federated(ds, enc, 4, "shards", seed=0, shards_per_client=2, max_examples=200)
    assert sum(len(c.train) + len(c.test) for c in fed.clients) + len(fed.global_test) == 200
    pool = np.sort(np.random.default_rng(0).choice(5000, size=200, replace=False))  # as drawn
    pixels, _ = enc([ds.images[i] for i in pool])
    assert pixels.shape == (200, 3, 28, 28)
    assert pixels.min() == -1.0 and pixels.max() == 1.0  # 0..255 -> [-1, 1]
    label_of = {pixels[k].numpy().tobytes(): ds.labels[i] for k, i in enumerate(pool)}
    for c in fed.clients:  # shards: label-skewed clients; pixels travel with their labels
        assert len(torch.unique(c.train.labels)) < 10
        x, mask, y = next(c.train.batches(8, torch.Generator().manual_seed(0)))
        assert x.shape[1:] == (3, 28, 28) and mask.shape == (len(y), 1)
        assert [label_of[r.numpy().tobytes()] for r in x] == y.tolist()
    digits, _ = load_digits()
    assert len(digits) == 1797 and digits.image(0).size == (8, 8)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_official_split():
    train, test = load_images("fashion-mnist")
    assert len(train) == 60000 and len(test) == 10000 and train.label_names[9] == "Ankle boot"


def test_fashion_mnist_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


def test_hf_folder_with_an_image_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    from fedfm.config import DataConfig
    from fedfm.data import catalogue

    rng = np.random.default_rng(0)
    rows = {"image": [PIL.fromarray(rng.integers(0, 255, (9, 9, 3), dtype=np.uint8))
                      for _ in range(6)],
            "label": [0, 1, 2, 0, 1, 2], "site": ["a", "a", "b", "b", "c", "c"]}
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["x", "y", "z"]),
                                  "site": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    d = DataConfig(name="hf", path=str(tmp_path / "ds"), client_column="site")
    train, test = catalogue.load("hf", d, 0)
    assert len(train) == 6 and train.label_names == ["x", "y", "z"] and test is None
    assert train.groups == [0, 0, 1, 1, 2, 2]
    enc = load_image_encoder(write_processor(tmp_path / "model", size=8))
    pixels, _ = enc(train.images)
    want, _ = enc(rows["image"])
    torch.testing.assert_close(pixels, want)  # decoded from the stored PNG bytes, losslessly
