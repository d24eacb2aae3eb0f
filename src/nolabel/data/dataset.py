"""`ImageDataset`: the one dataset type every reader returns (a torch-free sequence).

`ds[i]` is `(PIL.Image in mode "RGB", int label)`, label -1 when unknown. Labels, class names and
item names are known without decoding a single image. Two kinds:

- `ArrayImageDataset`: images held in memory as `ds.images`, uint8 (N, H, W) or (N, H, W, 3), so
  training code can augment whole batches as tensors without going through PIL;
- `FileImageDataset`: one image file per item, decoded on access; a file that cannot be decoded
  raises `BadImageError`, which the feature extractor skips or fails on, as `ds.on_bad_image` says.
"""
from __future__ import annotations

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
        # string slicing, not Path.relative_to: ImageNet has 1.28M paths
        prefix = os.path.join(str(self.root), "")
        if not all(p.startswith(prefix) for p in self.paths):
            raise ValueError(f"every path must lie under {self.root}")
        names = [p[len(prefix):].replace(os.sep, "/") for p in self.paths]
        super().__init__(spec, labels, classes, names, on_bad_image)

    def _image(self, i: int, min_size: int | None = None) -> Image.Image:
        return open_image(self.paths[i], border=self.border, min_size=min_size)


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
