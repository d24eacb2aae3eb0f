"""Dataset specs: `NAME[:PATH][:SPLIT]` strings, parsed and dispatched to their reader.

The name ends at the first colon. For datasets with splits, the part after the *last* colon is the
split when it is one of that dataset's split names, so `fashion-mnist:test`,
`fashion-mnist:/data/fmnist` and `fashion-mnist:/data/fmnist:test` all mean what they say, and a
path may itself contain colons. A folder literally named like a split is written `./test`.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import NolabelError
from . import cifar, digits, folders, imagenet, mnist, stl10
from .dataset import ON_BAD_IMAGE_CHOICES, ImageDataset, Request


@dataclass(frozen=True)
class Reader:
    """One spec name: its reader, whether it takes a PATH ("required", "optional", "none") and its splits."""

    name: str
    description: str
    load: Callable[[Request], ImageDataset]
    path: str
    splits: tuple[str, ...] = ()
    default_split: str | None = None

    @property
    def pattern(self) -> str:
        path = {"required": ":PATH", "optional": "[:PATH]", "none": ""}[self.path]
        splits = f"[:{'|'.join(self.splits)}]" if self.splits else ""
        return self.name + path + splits


@dataclass(frozen=True)
class SpecInfo:
    """A row of `list_specs()`: `available` is True/False when known here, None when it needs a PATH."""

    pattern: str
    description: str
    available: bool | None
    note: str


_IMAGENET_SUBSET = "SCAN's ImageNet-{k} classes (PATH/train|val/<wnid>/), labels 0..{k1} by sorted wnid"
READERS = {r.name: r for r in [
    Reader("fashion-mnist", "Fashion-MNIST, 28x28 gray, 10 classes (IDX files; default all = train+test, 70k)",
           mnist.load_fashion_mnist, "optional", mnist.SPLITS, "all"),
    Reader("mnist", "any MNIST-layout IDX folder (train-/t10k-images/labels, .gz or raw), 10 classes",
           mnist.load_mnist, "required", mnist.SPLITS, "all"),
    Reader("digits", "scikit-learn's load_digits, 1,797 8x8 gray digits scaled to 0..255, 10 classes",
           digits.load_digits, "none"),
    Reader("cifar10", "CIFAR-10 python pickles (cifar-10-batches-py), 32x32, 10 classes",
           cifar.load_cifar10, "required", cifar.SPLITS, "all"),
    Reader("cifar100", "CIFAR-100 python pickles (cifar-100-python), 100 fine classes",
           cifar.load_cifar100, "required", cifar.SPLITS, "all"),
    Reader("cifar100-20", "CIFAR-100 labelled with its 20 superclasses (the files' coarse labels)",
           cifar.load_cifar100_20, "required", cifar.SPLITS, "all"),
    Reader("stl10", "STL-10 binary (stl10_binary/), 96x96, 10 classes, unlabeled = -1 (default train)",
           stl10.load_stl10, "required", stl10.SPLITS, "train"),
    Reader("imagenet", "ImageNet class folders PATH/train|val/<wnid>/, labels by sorted wnid (default train)",
           imagenet.load_imagenet, "required", imagenet.SPLITS, "train"),
    *(Reader(name, _IMAGENET_SUBSET.format(k=name[8:], k1=int(name[8:]) - 1), imagenet.load_imagenet_subset,
             "required", imagenet.SPLITS, "train") for name in imagenet.SUBSET_FILES),
    Reader("objectnet", "ObjectNet 1.0 (PATH/images/, PATH/mappings/), 313 classes, 1-px frame cropped",
           imagenet.load_objectnet, "required"),
    Reader("folder", "a folder of class subfolders, labels by sorted subfolder name",
           folders.load_class_folders, "required"),
    Reader("images", "every image file under a folder (recursively), unlabelled (label -1)",
           folders.load_unlabelled_images, "required"),
]}


def load(spec: str, *, on_bad_image: str = "skip", allow_download: bool = False) -> ImageDataset:
    """Load the dataset a spec names (see `list_specs()` for the specs).

    on_bad_image: "skip" or "fail", stored as `ds.on_bad_image` for consumers of `BadImageError`.
    allow_download: fetch a missing downloadable dataset (Fashion-MNIST) from its official location;
        the environment variable NOLABEL_ALLOW_DOWNLOAD=1 allows it too.
    """
    if on_bad_image not in ON_BAD_IMAGE_CHOICES:
        raise NolabelError(f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE_CHOICES)}, got {on_bad_image!r}")
    req = parse_spec(spec, on_bad_image=on_bad_image, allow_download=allow_download)
    if req.root is not None and not req.root.exists():
        raise NolabelError(f"{spec}: {req.root} does not exist")
    return READERS[req.name].load(req)


def parse_spec(spec: str, *, on_bad_image: str = "skip", allow_download: bool = False) -> Request:
    name, _, rest = spec.partition(":")
    reader = READERS.get(name)
    if reader is None:
        raise NolabelError(f"unknown dataset spec {spec!r}; valid specs: "
                           + ", ".join(r.pattern for r in READERS.values()))
    if reader.path == "none":
        if rest:
            raise NolabelError(f"{spec}: {name} takes no path or split (write just '{name}')")
        return Request(spec, name, None, None, on_bad_image, allow_download)
    path_text, split = rest, reader.default_split
    if reader.splits and rest:
        head, colon, last = rest.rpartition(":")
        if last in reader.splits:
            path_text, split = head, last
        elif "/" not in last and not Path(rest).exists() and (colon or reader.path == "optional"):
            raise NolabelError(f"{spec}: '{last}' is not a split of {name} (valid: {', '.join(reader.splits)})"
                               + ("" if colon else " nor an existing folder"))
    if not path_text and reader.path == "required":
        raise NolabelError(f"{spec}: {name} needs a folder: {reader.pattern}")
    root = Path(os.path.abspath(Path(path_text).expanduser())) if path_text else None
    return Request(spec, name, root, split, on_bad_image, allow_download)


def list_specs() -> list[SpecInfo]:
    """One row per spec name, saying whether it can be loaded here without further input."""
    rows = []
    for reader in READERS.values():
        available, note = None, "give PATH"
        if reader.name == "fashion-mnist":
            found = next((d for d in mnist.fashion_mnist_dirs()
                          if d.is_dir() and not mnist.missing_idx_files(d, "all")), None)
            allowed = os.environ.get("NOLABEL_ALLOW_DOWNLOAD") == "1"
            available = found is not None
            note = str(found) if found else ("will download" if allowed else "not found; NOLABEL_ALLOW_DOWNLOAD=1")
        elif reader.name == "digits":
            available = importlib.util.find_spec("sklearn") is not None
            note = "scikit-learn" if available else "needs scikit-learn"
        rows.append(SpecInfo(reader.pattern, reader.description, available, note))
    return rows
