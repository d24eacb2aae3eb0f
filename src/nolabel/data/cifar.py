"""CIFAR-10, CIFAR-100 and CIFAR-100-20, from the official "python version" pickles.

Each batch is a pickled dict: `data` uint8 (N, 3072), each row the 1024 red, then 1024 green,
then 1024 blue values of a 32x32 image in row-major order; `labels` (CIFAR-10) or `fine_labels` and
`coarse_labels` (CIFAR-100). Class names are in `batches.meta` / `meta`.

Unpickling can run any code the file names, so the files are read with `SafeUnpickler`, which
knows only the few callables the official files (and numpy's pickles of plain arrays) need.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import NolabelError
from .dataset import ArrayImageDataset, Request

SPLITS = ("train", "test", "all")
SIDE = 32

# (module, name) pairs a CIFAR pickle may reference: numpy array reconstruction (numpy 1 and 2
# spellings, pickle protocols 2-5) and the bytes decoder Python 3 uses for protocol-2 bytes.
SAFE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside `SAFE_GLOBALS`."""

    def find_class(self, module: str, name: str):
        if (module, name) not in SAFE_GLOBALS:
            raise NolabelError(f"refusing to unpickle {module}.{name}: not part of a CIFAR file "
                               "(the file may be malicious or not a CIFAR batch)")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict:
    """One CIFAR pickle as a dict with str keys."""
    try:
        with open(path, "rb") as f:
            # latin1: the files were written by Python 2; numpy needs latin1 to read their arrays
            obj = SafeUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise NolabelError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as e:
        raise NolabelError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise NolabelError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def load_cifar10(req: Request) -> ArrayImageDataset:
    folder = _batches_folder(req, "cifar-10-batches-py", "batches.meta")
    classes = _names(folder / "batches.meta", "label_names")
    parts = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    return _load(req, folder, parts, "labels", classes)


def load_cifar100(req: Request) -> ArrayImageDataset:
    folder = _batches_folder(req, "cifar-100-python", "meta")
    return _load(req, folder, {"train": ["train"], "test": ["test"]}, "fine_labels",
                 _names(folder / "meta", "fine_label_names"))


def load_cifar100_20(req: Request) -> ArrayImageDataset:
    """CIFAR-100 labelled with its 20 superclasses (the files' own `coarse_labels`)."""
    folder = _batches_folder(req, "cifar-100-python", "meta")
    return _load(req, folder, {"train": ["train"], "test": ["test"]}, "coarse_labels",
                 _names(folder / "meta", "coarse_label_names"))


def _batches_folder(req: Request, subfolder: str, marker: str) -> Path:
    """`req.root` itself or its `subfolder`, whichever holds the `marker` file."""
    root = req.folder()
    for folder in (root / subfolder, root):
        if (folder / marker).is_file():
            return folder
    raise NolabelError(f"{req.spec}: no {marker} in {req.root / subfolder} or {req.root}; give the "
                       f"folder that holds {subfolder}/ (or {subfolder} itself)")


def _names(meta_path: Path, key: str) -> list[str]:
    meta = load_pickle(meta_path)
    if key not in meta:
        raise NolabelError(f"{meta_path}: no '{key}' entry (found {', '.join(map(str, meta))})")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _load(req: Request, folder: Path, parts: dict[str, list[str]], label_key: str,
          classes: list[str]) -> ArrayImageDataset:
    images, labels, names = [], [], []
    for part in ("train", "test") if req.split == "all" else (req.split,):
        offset = 0
        for batch_name in parts[part]:
            batch = load_pickle(folder / batch_name)
            data, batch_labels = _check_batch(folder / batch_name, batch, label_key, len(classes))
            images.append(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
            labels.append(batch_labels)
            names.extend(f"{part}/{offset + i}" for i in range(len(batch_labels)))
            offset += len(batch_labels)
    return ArrayImageDataset(req.spec, np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels),
                             classes, names, req.on_bad_image)


def _check_batch(path: Path, batch: dict, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    for key in ("data", label_key):
        if key not in batch:
            raise NolabelError(f"{path}: no '{key}' entry (found {', '.join(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE * SIDE:
        shape = getattr(data, "shape", type(data).__name__)
        raise NolabelError(f"{path}: 'data' must be uint8 (N, 3072), found {shape}")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < n_classes):
        raise NolabelError(f"{path}: '{label_key}' must hold {len(data)} labels in 0..{n_classes - 1}")
    return data, labels
