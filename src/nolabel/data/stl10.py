"""STL-10, binary version (`stl10_binary/`).

`*_X.bin` holds uint8 images one after another, each 3 x 96 x 96: the red, green and blue planes,
each stored column-major (MATLAB order: the first 96 bytes are the leftmost column, top to bottom).
`*_y.bin` holds one uint8 label per image, 1..10, mapped here to 0..9. `unlabeled_X.bin` (100,000
images, 2.7 GB) has no labels: they are -1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NolabelError
from .dataset import ArrayImageDataset, Request

SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
CHUNK = 4096  # images converted per step, so the 2.7 GB unlabeled file is never held twice


def load_stl10(req: Request) -> ArrayImageDataset:
    root = req.folder()
    folder = root / "stl10_binary" if (root / "stl10_binary").is_dir() else root
    classes = _class_names(folder)
    parts = req.split.split("+")
    counts = [_image_count(folder / f"{part}_X.bin") for part in parts]
    images = np.empty((sum(counts), SIDE, SIDE, 3), np.uint8)
    labels, names, start = [], [], 0
    for part, count in zip(parts, counts):
        _read_images(folder / f"{part}_X.bin", count, images[start:start + count])
        labels.append(np.full(count, -1, np.int64) if part == "unlabeled"
                      else _read_labels(folder / f"{part}_y.bin", count, len(classes)))
        names.extend(f"{part}/{i}" for i in range(count))
        start += count
    return ArrayImageDataset(req.spec, images, np.concatenate(labels), classes, names, req.on_bad_image)


def _class_names(folder: Path) -> list[str]:
    path = folder / "class_names.txt"
    if not path.is_file():
        raise NolabelError(f"no class_names.txt in {folder}; give the folder that holds stl10_binary/ "
                           "(or stl10_binary itself)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _image_count(path: Path) -> int:
    if not path.is_file():
        raise NolabelError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise NolabelError(f"{path}: {size} bytes is not a whole, non-zero number of 3x96x96 images")
    return size // IMAGE_BYTES


def _read_images(path: Path, count: int, out: np.ndarray) -> None:
    """Fill `out` (count, 96, 96, 3) from the column-major planes in `path`."""
    raw = np.memmap(path, np.uint8, mode="r", shape=(count, 3, SIDE, SIDE))  # [n, channel, x, y]
    for start in range(0, count, CHUNK):
        out[start:start + CHUNK] = raw[start:start + CHUNK].transpose(0, 3, 2, 1)  # -> [n, y, x, channel]
    del raw


def _read_labels(path: Path, count: int, n_classes: int) -> np.ndarray:
    if not path.is_file():
        raise NolabelError(f"{path}: file not found")
    labels = np.fromfile(path, np.uint8).astype(np.int64)
    if len(labels) != count:
        raise NolabelError(f"{path}: {len(labels)} labels for {count} images")
    if count and not 1 <= labels.min() <= labels.max() <= n_classes:
        raise NolabelError(f"{path}: labels must be 1..{n_classes}, found {labels.min()}..{labels.max()}")
    return labels - 1
