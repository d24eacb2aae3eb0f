"""MNIST-format datasets: IDX files (gzipped or raw), Fashion-MNIST with its lookup and download.

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, then one
uint32 per dimension) followed by the values. Images are 0x00000803 (uint8, 3 dimensions),
labels 0x00000801 (uint8, 1 dimension). numpy reads the values directly; the header is validated
here so a wrong or truncated file fails with its name instead of producing garbage pixels.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import http.client
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import NolabelError
from ..io import atomic_path
from .dataset import ArrayImageDataset, Request

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# split -> (images file, labels file), the names both MNIST and Fashion-MNIST are published under
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("train", "test", "all")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Debian's dataset-fashion-mnist package installs the four .gz files here.
SYSTEM_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
# MD5 of the published .gz files (Fashion-MNIST README); a download that differs is rejected.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends in .gz), checking magic number and size."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise NolabelError(f"{path}: cannot read ({e})") from None
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != magic:
        found = data[:4].hex() if len(data) >= 4 else f"only {len(data)} bytes"
        raise NolabelError(f"{path}: not an IDX file with magic number {magic:08x} (found {found})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise NolabelError(f"{path}: IDX header cut short ({len(data)} bytes); the file is damaged")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape))
    if expected != len(data):
        raise NolabelError(f"{path}: IDX header announces shape {shape} ({expected} bytes) "
                           f"but the file holds {len(data)} bytes; the file is damaged")
    return np.frombuffer(bytearray(data), np.uint8, offset=header).reshape(shape)


def find_idx_file(folder: Path, name: str) -> Path | None:
    """The file `name` in `folder`, gzipped or not (also the `train-images.idx3-ubyte` spelling)."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def missing_idx_files(folder: Path, split: str) -> list[str]:
    names = [n for s in _parts(split) for n in IDX_FILES[s]]
    return [n for n in names if find_idx_file(folder, n) is None]


def load_idx_folder(folder: Path, split: str, classes: list[str], spec: str,
                    on_bad_image: str) -> ArrayImageDataset:
    """An MNIST-layout folder's `split` ("train", "test" or "all" = train then test)."""
    missing = missing_idx_files(folder, split)
    if missing:
        raise NolabelError(f"{folder}: missing {', '.join(m + '[.gz]' for m in missing)}")
    images, labels, names = [], [], []
    for part in _parts(split):
        images_file, labels_file = (find_idx_file(folder, n) for n in IDX_FILES[part])
        part_images = read_idx(images_file, IMAGES_MAGIC)
        part_labels = read_idx(labels_file, LABELS_MAGIC)
        if len(part_images) != len(part_labels):
            raise NolabelError(f"{folder}: {images_file.name} holds {len(part_images)} images but "
                               f"{labels_file.name} {len(part_labels)} labels")
        if len(part_labels) and part_labels.max() >= len(classes):
            raise NolabelError(f"{labels_file}: label {part_labels.max()} but only {len(classes)} classes")
        images.append(part_images)
        labels.append(part_labels)
        names.extend(f"{part}/{i}" for i in range(len(part_labels)))
    return ArrayImageDataset(spec, np.concatenate(images) if len(images) > 1 else images[0],
                             np.concatenate(labels).astype(np.int64), classes, names, on_bad_image)


def load_mnist(req: Request) -> ArrayImageDataset:
    return load_idx_folder(req.folder(), req.split, [str(d) for d in range(10)], req.spec, req.on_bad_image)


def load_fashion_mnist(req: Request) -> ArrayImageDataset:
    """Fashion-MNIST from `req.root`, or else from the first folder of `fashion_mnist_dirs()` that
    holds the split's files, or else downloaded (only when allowed) into `download_dir()`."""
    if req.root is not None:
        return load_idx_folder(req.folder(), req.split, FASHION_MNIST_CLASSES, req.spec, req.on_bad_image)
    looked = []
    for folder in fashion_mnist_dirs():
        missing = missing_idx_files(folder, req.split) if folder.is_dir() else None
        if missing == []:
            return load_idx_folder(folder, req.split, FASHION_MNIST_CLASSES, req.spec, req.on_bad_image)
        looked.append(f"{folder} ({'no such folder' if missing is None else 'missing ' + ', '.join(missing)})")
    if req.allow_download or os.environ.get("NOLABEL_ALLOW_DOWNLOAD") == "1":
        folder = download_fashion_mnist(download_dir())
        return load_idx_folder(folder, req.split, FASHION_MNIST_CLASSES, req.spec, req.on_bad_image)
    raise NolabelError(
        f"Fashion-MNIST files not found; looked in: {'; '.join(looked)}. Put the four IDX files "
        f"(.gz or not) in one of these folders, name a folder (fashion-mnist:PATH), or allow the "
        f"download into {download_dir()} (allow_download=True or NOLABEL_ALLOW_DOWNLOAD=1)"
    )


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: $NOLABEL_DATA/fashion-mnist, $NOLABEL_DATA,
    the Debian package's folder, the download folder."""
    data_root = os.environ.get("NOLABEL_DATA")
    candidates = [Path(data_root) / "fashion-mnist", Path(data_root)] if data_root else []
    candidates += [*SYSTEM_DIRS, download_dir()]
    return list(dict.fromkeys(candidates))


def download_dir() -> Path:
    data_root = os.environ.get("NOLABEL_DATA")
    return (Path(data_root) if data_root else Path.home() / ".cache" / "nolabel") / "fashion-mnist"


def download_fashion_mnist(folder: Path) -> Path:
    """Fetch the four official .gz files into `folder`, verifying each one's published MD5."""
    for name, md5 in FASHION_MNIST_MD5.items():
        target = folder / name
        if target.is_file() and _md5(target) == md5:
            continue
        errors = []
        for base in FASHION_MNIST_URLS:
            try:
                with atomic_path(target) as tmp:
                    with urllib.request.urlopen(base + name, timeout=60) as response:
                        tmp.write_bytes(response.read())
                    if _md5(tmp) != md5:
                        raise OSError(f"MD5 {_md5(tmp)} differs from the published {md5}")
                break
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"{base + name}: {e}")
        else:
            raise NolabelError(f"could not download Fashion-MNIST's {name}: {'; '.join(errors)}")
    return folder


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _parts(split: str) -> tuple[str, ...]:
    return ("train", "test") if split == "all" else (split,)
