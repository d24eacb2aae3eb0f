"""Per-cluster montages: the images closest to the centroid, then a few random members.

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


@dataclass(frozen=True)
class Member:
    """One image shown for a cluster: its store row and why it was picked ("typical" or "random")."""

    row: int
    kind: str


@dataclass(frozen=True)
class Sprite:
    data: bytes
    mime: str
    tile_px: int  # side of one square tile, in image pixels
    readable: list[bool]  # per tile, False where the image could not be read


def pick_members(assignments: SourceAssignments, n_typical: int, n_random: int,
                 seed: int = 0) -> dict[int, list[Member]]:
    """{cluster: members}: the `n_typical` most typical rows (nearest the centroid, or most confident
    where there are no centroids), in that order, then `n_random` other rows drawn at random (sorted
    by row)."""
    rng = np.random.default_rng(seed)
    typical = assignments.typical_order()
    order = typical[np.argsort(assignments.cluster[typical], kind="stable")]
    sorted_clusters = assignments.cluster[order]
    ids, starts = np.unique(sorted_clusters, return_index=True)
    ends = np.append(starts[1:], len(order))
    members = {}
    for cluster, start, end in zip(ids.tolist(), starts, ends):
        rows = order[start:end]
        rest = rows[n_typical:]
        drawn = np.sort(rng.choice(rest, size=min(n_random, len(rest)), replace=False))
        members[cluster] = ([Member(int(r), "typical") for r in rows[:n_typical]]
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


def render_sprite(images: list[Image.Image | None], tile_px: int) -> Sprite:
    """Tiles of side `tile_px` in one row; each image centre-cropped to a square. PNG for small
    tiles (exact pixels, compresses well), JPEG for photo-sized ones."""
    sheet = Image.new("RGB", (tile_px * len(images), tile_px), MISSING_TILE_RGB)
    for i, image in enumerate(images):
        if image is not None:
            small = max(image.size) <= tile_px
            tile = ImageOps.fit(image.convert("RGB"), (tile_px, tile_px),
                                method=Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)
            sheet.paste(tile, (i * tile_px, 0))
    buffer = io.BytesIO()
    if tile_px < 48:
        sheet.save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    else:
        sheet.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        mime = "image/jpeg"
    return Sprite(buffer.getvalue(), mime, tile_px, [image is not None for image in images])
