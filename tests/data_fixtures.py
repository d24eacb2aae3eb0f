"""Writers for small datasets in the exact official file formats, for tests of nolabel.data.

Each writer follows the format's published description, not nolabel's reader, so a reader bug
(a transposed image, a shifted label) shows up as a mismatch.
"""
from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian uint32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist_folder(folder: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], gz: bool) -> None:
    """parts: {"train"|"t10k": (images (N,28,28), labels (N,))}."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, (images, labels) in parts.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N,32,32,3) -> (N,3072): 1024 red values row by row, then green, then blue."""
    return np.concatenate([images[..., c].reshape(len(images), -1) for c in range(3)], axis=1)


def python2_pickle(obj) -> bytes:
    """Protocol-0 pickle as Python 2's cPickle writes it (str as S'...' byte strings, numpy's
    `numpy.core.multiarray` module path): the form of the published CIFAR files. Supports dicts
    with str keys, lists, ints, str and 2-D uint8 arrays."""
    if isinstance(obj, dict):
        return b"(d" + b"".join(python2_pickle(k) + python2_pickle(v) + b"s" for k, v in obj.items())
    if isinstance(obj, list):
        return b"(l" + b"".join(python2_pickle(v) + b"a" for v in obj)
    if isinstance(obj, int):
        return b"I%d\n" % obj
    if isinstance(obj, (str, bytes)):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        return b"S'" + b"".join(b"\\x%02x" % c for c in raw) + b"'\n"
    assert isinstance(obj, np.ndarray) and obj.dtype == np.uint8 and obj.ndim == 2
    return (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
            b"(I1\n(I%d\nI%d\ntcnumpy\ndtype\n(S'u1'\nI00\nI01\ntR(I3\nS'|'\nNNNI-1\nI-1\nI0\ntbI00\n"
            % obj.shape + python2_pickle(np.ascontiguousarray(obj).tobytes()) + b"tb")


def write_python2_pickle(path: Path, obj) -> None:
    path.write_bytes(python2_pickle(obj) + b".")


def _dump(path: Path, obj: dict) -> None:
    """Protocol 2 from Python 3: how re-saved copies of the files look (the originals: `python2_pickle`)."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, train: list[tuple[np.ndarray, list[int]]], test: tuple[np.ndarray, list[int]],
                  label_names: list[str]) -> Path:
    """root/cifar-10-batches-py/ with data_batch_1..5 (from `train`), test_batch, batches.meta,
    in the Python 2 pickle form of the published files."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, (images, labels) in enumerate(train, start=1):
        write_python2_pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": labels, "data": cifar_rows(images),
            "filenames": [f"img_{i}_{j}.png" for j in range(len(labels))]})
    images, labels = test
    write_python2_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels,
                                                 "data": cifar_rows(images), "filenames": ["t.png"] * len(labels)})
    write_python2_pickle(folder / "batches.meta", {"num_cases_per_batch": 10000, "label_names": label_names,
                                                   "num_vis": 3072})
    return folder


def write_cifar100(root: Path, parts: dict[str, tuple[np.ndarray, list[int], list[int]]],
                   fine_names: list[str], coarse_names: list[str]) -> Path:
    """root/cifar-100-python/ with train, test ({data, fine_labels, coarse_labels, ...}) and meta,
    pickled by Python 3 (protocol 2, bytes values)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for part, (images, fine, coarse) in parts.items():
        _dump(folder / part, {"filenames": [b"x.png"] * len(fine), "batch_label": part.encode(),
                              "fine_labels": fine, "coarse_labels": coarse, "data": cifar_rows(images)})
    _dump(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    return folder


def stl10_bytes(images: np.ndarray) -> bytes:
    """(N,96,96,3) -> STL-10 layout: per image, per channel, the pixels in column-major order."""
    return b"".join(images[n, :, :, c].flatten(order="F").tobytes()
                    for n in range(len(images)) for c in range(3))


def write_stl10(root: Path, parts: dict[str, tuple[np.ndarray, np.ndarray | None]], class_names: list[str]) -> Path:
    """root/stl10_binary/{part}_X.bin and {part}_y.bin (labels 1..10), class_names.txt."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    for part, (images, labels) in parts.items():
        (folder / f"{part}_X.bin").write_bytes(stl10_bytes(images))
        if labels is not None:
            (folder / f"{part}_y.bin").write_bytes(np.asarray(labels, np.uint8).tobytes())
    (folder / "class_names.txt").write_text("\n".join(class_names) + "\n")
    return folder


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")


def write_objectnet(root: Path, folders: dict[str, str], images: dict[str, list[np.ndarray]],
                    to_imagenet: dict[str, str], sorted_to_2012: list[int], names_2012: list[str]) -> None:
    """ObjectNet 1.0: root/images/<folder>/*.png (each image framed by a 1-pixel red border) and
    root/mappings/ (folder_to_objectnet_label.json, objectnet_to_imagenet_1k.json,
    pytorch_to_imagenet_2012_id.json, imagenet_to_label_2012_v2)."""
    for folder, pictures in images.items():
        for i, picture in enumerate(pictures):
            framed = np.zeros((picture.shape[0] + 2, picture.shape[1] + 2, 3), np.uint8)
            framed[..., 0] = 255
            framed[1:-1, 1:-1] = picture
            save_png(root / "images" / folder / f"{i:04d}.png", framed)
    mappings = root / "mappings"
    mappings.mkdir(parents=True)
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(folders, indent=2))
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(to_imagenet, indent=2))
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(
        json.dumps({str(k): v for k, v in enumerate(sorted_to_2012)}, indent=2))
    (mappings / "imagenet_to_label_2012_v2").write_text("\n".join(names_2012) + "\n")

