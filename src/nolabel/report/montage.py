"""Per-cluster montages: the images closest to the centroid, the farthest, and a few random members;
and sheets of single thumbnails for the map's hover and the similar-images panel.

A cluster's montage is one sprite image (tiles side by side), so a page of clusters costs one image
request or data URI per cluster rather than one per thumbnail. Images smaller than the thumbnail
size are kept at their own size and drawn scaled up by the browser with crisp pixels
(`image-rendering: pixelated`), which keeps the sprites of 8x8 or 28x28 datasets a few hundred bytes.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from ..errors import NolabelError
from ..clustering import SourceAssignments

JPEG_QUALITY = 82
MISSING_TILE_RGB = (226, 229, 234)
SHEET_COLUMNS = 32
SHEET_TILES = SHEET_COLUMNS * SHEET_COLUMNS
WEBP_QUALITY = 80


@dataclass(frozen=True)
class Member:
    """One image shown for a cluster: its store row and why it was picked ("typical", "atypical" or
    "random")."""

    row: int
    kind: str


@dataclass(frozen=True)
class Sprite:
    data: bytes
    mime: str
    tile_px: int  # side of one square tile, in image pixels
    readable: list[bool]  # per tile, False where the image could not be read


def pick_members(assignments: SourceAssignments, n_typical: int, n_random: int,
                 seed: int = 0, n_atypical: int = 0) -> dict[int, list[Member]]:
    """{cluster: members}: the `n_typical` most typical rows, in that order, then the `n_atypical` least
    typical other rows, least typical first (the ends of `SourceAssignments.by_typicality`, as
    `nolabel.clustering.outliers` gives them), then `n_random` of the rows left drawn at random (sorted
    by row)."""
    rng = np.random.default_rng(seed)
    members = {}
    for cluster, rows in assignments.by_typicality().items():
        n_far = min(n_atypical, max(len(rows) - n_typical, 0))
        atypical = rows[len(rows) - n_far:][::-1]
        rest = rows[n_typical:len(rows) - n_far]
        drawn = np.sort(rng.choice(rest, size=min(n_random, len(rest)), replace=False))
        members[cluster] = ([Member(int(r), "typical") for r in rows[:n_typical]]
                            + [Member(int(r), "atypical") for r in atypical]
                            + [Member(int(r), "random") for r in drawn])
    return members


def image_reader(spec: str, items: list[str]) -> Callable[[int], Image.Image | None]:
    """row -> the image of `items[row]` (None when unreadable) in the dataset `spec`.

    Raises NolabelError when the dataset cannot be loaded or no longer holds these items.
    """
    from ..data import BadImageError, load

    dataset = load(spec)
    position = {name: i for i, name in enumerate(dataset.item_names)}
    if items and items[0] not in position and items[-1] not in position:
        raise NolabelError(f"{spec} no longer holds the images clustered (e.g. {items[0]})")

    def read(row: int) -> Image.Image | None:
        i = position.get(items[row])
        if i is None:
            return None
        try:
            return dataset[i][0]
        except (BadImageError, OSError):
            return None

    return read


def tile_size(image: Image.Image, thumb_px: int) -> int:
    """The thumbnail side: `thumb_px`, or the image's own size when it is smaller."""
    return min(thumb_px, max(image.size))


def _tile(image: Image.Image, tile_px: int) -> Image.Image:
    """The image centre-cropped to a square of side `tile_px`, pixels kept sharp when enlarged."""
    small = max(image.size) <= tile_px
    return ImageOps.fit(image.convert("RGB"), (tile_px, tile_px),
                        method=Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)


def render_sprite(images: list[Image.Image | None], tile_px: int) -> Sprite:
    """Tiles of side `tile_px` in one row; each image centre-cropped to a square. PNG for small
    tiles (exact pixels, compresses well), JPEG for photo-sized ones."""
    sheet = Image.new("RGB", (tile_px * len(images), tile_px), MISSING_TILE_RGB)
    for i, image in enumerate(images):
        if image is not None:
            sheet.paste(_tile(image, tile_px), (i * tile_px, 0))
    buffer = io.BytesIO()
    if tile_px < 48:
        sheet.save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    else:
        sheet.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        mime = "image/jpeg"
    return Sprite(buffer.getvalue(), mime, tile_px, [image is not None for image in images])


class Thumbnails:
    """Single-image thumbnails (the map's hover, the similar-images panel), each image once, drawn into
    square grid sheets of `SHEET_COLUMNS`² tiles in the order first asked for - so the images asked for
    together (one cluster's neighbours) share a sheet, and a page that loads sheets lazily loads few."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, str], int] = {}
        self._wanted: list[tuple[Callable[[int], Image.Image | None], int]] = []

    def add(self, dataset: str, item: str, read: Callable[[int], Image.Image | None], row: int) -> int:
        """The thumbnail id of image `item` of `dataset` (`read(row)` reads it), added if new."""
        key = (dataset, item)
        if key not in self._ids:
            self._ids[key] = len(self._wanted)
            self._wanted.append((read, row))
        return self._ids[key]

    def render(self, thumb_px: int, progress: bool = False) -> list[Sprite]:
        """The sheets: thumbnail id i is tile i % SHEET_TILES (row-major) of sheet i // SHEET_TILES."""
        from ..progress import progress_bar

        starts = range(0, len(self._wanted), SHEET_TILES)
        sheets = []
        for start in progress_bar(starts, desc="report thumbnails", unit="sheet", enabled=progress):
            images = [read(row) for read, row in self._wanted[start:start + SHEET_TILES]]
            first = next((im for im in images if im is not None), None)
            sheets.append(render_sheet(images, tile_size(first, thumb_px) if first is not None else 8))
        return sheets


def render_sheet(images: list[Image.Image | None], tile_px: int) -> Sprite:
    """Tiles of side `tile_px` in rows of SHEET_COLUMNS, each image centre-cropped to a square; WebP,
    lossless for tiny tiles, else lossy (a third of PNG's bytes on 28x28 Fashion-MNIST)."""
    rows = -(-len(images) // SHEET_COLUMNS)
    sheet = Image.new("RGB", (tile_px * SHEET_COLUMNS, tile_px * rows), MISSING_TILE_RGB)
    for i, image in enumerate(images):
        if image is not None:
            sheet.paste(_tile(image, tile_px), ((i % SHEET_COLUMNS) * tile_px, (i // SHEET_COLUMNS) * tile_px))
    buffer = io.BytesIO()
    sheet.save(buffer, format="WEBP", quality=WEBP_QUALITY, lossless=tile_px < 16, method=4)
    return Sprite(buffer.getvalue(), "image/webp", tile_px, [image is not None for image in images])
