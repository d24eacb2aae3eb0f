"""`ImageDataset`: the one dataset type every reader returns (a torch-free sequence).

`ds[i]` is `(PIL.Image in mode "RGB", int label)`, label -1 when unknown. Labels, class names and
item names are known without decoding a single image. Two kinds:

- `ArrayImageDataset`: images held in memory as `ds.images`, uint8 (N, H, W) or (N, H, W, 3), so
  training code can augment whole batches as tensors without going through PIL;
- `FileImageDataset`: one image file per item, decoded on access; a file that cannot be decoded
  raises `BadImageError`, which the feature extractor skips or fails on, as `ds.on_bad_image` says.
"""
from __future__ import annotations

import hashlib
import json
import operator
import os
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import NolabelError
from .images import open_image

ON_BAD_IMAGE_CHOICES = ("skip", "fail")


class ImageDataset(Sequence):
    """A labelled (or unlabelled) sequence of RGB images.

    Attributes:
        spec: the spec string the dataset was loaded from.
        labels: int64 (N,), -1 where unknown.
        classes: class names, `classes[label]`; empty when unlabelled.
        item_names: one name per item, stable across runs (file path relative to the dataset root,
            or "split/index" for array datasets).
        on_bad_image: "skip" or "fail", what consumers do when `ds[i]` raises `BadImageError`.
    """

    def __init__(self, spec: str, labels: np.ndarray, classes: list[str], item_names: list[str],
                 on_bad_image: str = "skip"):
        if on_bad_image not in ON_BAD_IMAGE_CHOICES:
            raise NolabelError(
                f"on_bad_image must be one of {', '.join(ON_BAD_IMAGE_CHOICES)}, got {on_bad_image!r}"
            )
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) != len(item_names):
            raise ValueError(f"{len(item_names)} items but labels of shape {labels.shape}")
        if len(labels) and (labels.min() < -1 or labels.max() >= len(classes)):
            raise ValueError(f"labels {labels.min()}..{labels.max()} do not fit {len(classes)} classes")
        self.spec = spec
        self.labels = labels
        self.classes = list(classes)
        self.item_names = list(item_names)
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        i = self._position(index)
        return self._image(i), int(self.labels[i])

    def image(self, index: int, min_size: int | None = None) -> Image.Image:
        """The RGB image at `index`. `min_size`: the caller will shrink it so that its shorter side
        is `min_size`; a JPEG may then be decoded at a reduced scale (1/2, 1/4, 1/8 - the DCT
        does it almost for free) that still keeps both sides >= min_size, which makes decoding
        several times cheaper for small eval sizes."""
        return self._image(self._position(index), min_size)

    def _position(self, index: int) -> int:
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} images")
        return i

    @abstractmethod
    def _image(self, i: int, min_size: int | None = None) -> Image.Image:
        """The decoded RGB image at position `i` (0 <= i < len(self)); see `image`."""

    def fingerprint(self) -> str:
        """sha256 (hex) of what the dataset holds: items, labels, class names and the images' content
        (see `_hash_content`). Two loads of unchanged data give the same fingerprint; a changed,
        added, removed or relabelled image changes it. Stage records list it among their inputs."""
        h = hashlib.sha256()
        h.update(json.dumps([type(self).__name__, self.classes, self.item_names]).encode("utf-8"))
        h.update(self.labels.astype("<i8").tobytes())
        self._hash_content(h)
        return h.hexdigest()

    @abstractmethod
    def _hash_content(self, h) -> None:
        """Feed the images' content (or a stand-in that changes with it) to the hash `h`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, n={len(self)}, classes={len(self.classes)})"


class ArrayImageDataset(ImageDataset):
    """Images held in memory: `images` is uint8 (N, H, W) for grayscale or (N, H, W, 3) for RGB."""

    def __init__(self, spec: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                 item_names: list[str], on_bad_image: str = "skip"):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] != 3):
            raise ValueError(f"images must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        super().__init__(spec, labels, classes, item_names, on_bad_image)
        self.images = images

    def _hash_content(self, h) -> None:
        h.update(f"{self.images.dtype}{self.images.shape}".encode())
        h.update(np.ascontiguousarray(self.images).data)

    def _image(self, i: int, min_size: int | None = None) -> Image.Image:
        pixels = self.images[i]
        return Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB").convert("RGB")


class FileImageDataset(ImageDataset):
    """One image file per item, decoded (fully, into RGB) on access.

    `root` is the dataset folder; `item_names` are the files' paths relative to it. `border` pixels
    are cropped from every side of every image (ObjectNet's frame).
    """

    def __init__(self, spec: str, root: Path, paths: list[str], labels: np.ndarray, classes: list[str],
                 on_bad_image: str = "skip", border: int = 0):
        self.root = Path(root)
        self.paths = [str(p) for p in paths]
        self.border = border
        # String checks, not Path.relative_to / resolve: ImageNet has 1.28M paths. They are lexical
        # only: a prefix match plus no '..' component. Names read from data files are checked,
        # links included, where they are joined (`path_inside`); paths found by listing a folder
        # need nothing more.
        prefix = os.path.join(str(self.root), "")
        if not all(p.startswith(prefix) for p in self.paths):
            raise ValueError(f"every path must lie under {self.root}")
        names = [p[len(prefix):].replace(os.sep, "/") for p in self.paths]
        if ".." in "\n".join(names):  # one C-level search; per-name work only when it finds something
            climbing = next((p for p, n in zip(self.paths, names) if ".." in n.split("/")), None)
            if climbing is not None:
                raise ValueError(f"{climbing} climbs out of {self.root} with '..'")
        super().__init__(spec, labels, classes, names, on_bad_image)

    def _hash_content(self, h) -> None:
        """Each file's size and modification time stand in for its bytes: hashing ImageNet's 140 GB
        would take longer than extracting it, while one stat per file takes seconds."""
        h.update(f"border={self.border}".encode())
        sizes_times = np.empty((len(self.paths), 2), dtype="<i8")
        for i, path in enumerate(self.paths):
            try:
                st = os.stat(path)
                sizes_times[i] = st.st_size, st.st_mtime_ns
            except OSError:  # gone since it was listed: extraction will report it as a bad image
                sizes_times[i] = -1, -1
        h.update(sizes_times.tobytes())

    def _image(self, i: int, min_size: int | None = None) -> Image.Image:
        return open_image(self.paths[i], border=self.border, min_size=min_size)


def path_inside(root: Path, name: str, source: str | os.PathLike) -> Path:
    """`root / name` for a `name` read from the file `source` (a folder named in a mapping file, a
    wnid from a class list), refused unless it leads strictly inside `root`.

    The joined path is resolved (`..` collapsed, symbolic links followed) and must be
    `is_relative_to` the resolved `root`; an absolute name, a `..` that climbs out, or a name that
    leads out through a symbolic link is a NolabelError naming `source`, the name and `root`.

    Symbolic links, the choice made here: `root` itself and the folders above it may be links
    (users put datasets on other disks and link them in): both sides are resolved, so those are
    followed. A link *below* `root`, on the path a data file names, is not followed out of it: a
    file's contents must not choose what is read elsewhere on the machine. Folders and images
    found by listing a directory (folder:, images:, imagenet:, and the images inside every class
    folder) never pass through here and are followed as the user placed them.
    """
    name = str(name)
    try:
        base = root.resolve()
        resolved = (root / name).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # a link loop, a NUL byte in the name, ...
        raise NolabelError(f"{source}: name {name!r} cannot be looked up under {root} ({e})") from None
    if resolved == base:
        raise NolabelError(f"{source}: name {name!r} names {root} itself, not something inside it")
    if not resolved.is_relative_to(base):
        via_link = Path(os.path.normpath(root / name)).is_relative_to(os.path.normpath(root))
        hint = (f" through a symbolic link below {root}; links named by a data file are not followed out of "
                "the dataset folder (link the whole folder instead)") if via_link else ""
        raise NolabelError(f"{source}: name {name!r} leads outside {root} (to {resolved}){hint}; "
                           "refusing to read it")
    if ".." in Path(name).parts:  # a harmless detour that stays inside: keep item names plain
        return root.joinpath(*resolved.relative_to(base).parts)
    return root / name


@dataclass(frozen=True)
class Request:
    """A parsed dataset spec, as handed to a reader: `name[:root][:split]` plus the load options."""

    spec: str
    name: str
    root: Path | None
    split: str | None
    on_bad_image: str = "skip"
    allow_download: bool = False

    def folder(self) -> Path:
        """`root`, which must be an existing folder."""
        if not self.root.is_dir():
            raise NolabelError(f"{self.spec}: {self.root} is not a folder")
        return self.root
