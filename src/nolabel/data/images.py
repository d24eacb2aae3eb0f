"""Decoding image files into 8-bit RGB, and finding image files in folders.

Every image nolabel reads goes through `to_rgb`, so all datasets agree on what a pixel means:

- grayscale (L), 1-bit, palette (P), CMYK, YCbCr: Pillow's own conversion to RGB (CMYK is converted
  naively, without an ICC profile);
- anything with transparency (RGBA, LA, PA, P with a transparent colour): composited onto a **white**
  background, the way image viewers and browsers show such files; a black background would turn
  transparent line art into black squares;
- 16-bit integers (I;16, I;16B, I;16L, and mode I holding 0..65535, which is how Pillow decodes
  16-bit PNG/TIFF/PGM): scaled from the 16-bit range to 0..255 (v * 255 / 65535, rounded). Pillow's
  `convert("L")` clips these at 255 instead, which turns most of a 16-bit photo white;
- other 32-bit integers (I outside 0..65535) and floats (F): floats within [0, 1] are scaled by 255;
  anything else is stretched from the image's own minimum..maximum to 0..255.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import NolabelError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
WHITE = 255


class BadImageError(NolabelError):
    """An image file that cannot be decoded (truncated, empty, not an image, ...)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: bad image ({reason})")


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[str]:
    """Every image file under `folder` (recursively, by extension), as sorted path strings.

    Hidden files and folders (name starting with ".") are skipped: they are editor and notebook
    leftovers, never dataset content.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(
            os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f)
        )
    return sorted(found)


def open_image(path: str | os.PathLike, *, border: int = 0, min_size: int | None = None) -> Image.Image:
    """Fully decode the image file at `path` into RGB, EXIF orientation applied.

    `border` pixels are cropped from every side after orientation. `min_size`: a JPEG may be
    decoded at a reduced scale that keeps both sides >= min_size (Pillow's draft mode), for callers
    that will shrink it to that size anyway; other formats ignore it. Raises `BadImageError` with the
    reason when the file is empty, truncated, not an image, or not convertible to RGB.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Some libraries flip this global; with it on, Pillow pads truncated files with grey
        # instead of failing, and a broken image would silently enter the features.
        raise NolabelError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code); nolabel needs it False "
            "to detect truncated images"
        )
    try:
        empty = os.path.getsize(path) == 0
    except OSError as e:
        raise BadImageError(path, f"cannot read: {e}") from None
    if empty:
        raise BadImageError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            if min_size and not border:
                img.draft("RGB", (min_size, min_size))
            img.load()  # Image.open only reads the header; load() decodes every byte
            img = ImageOps.exif_transpose(img)
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image file Pillow can identify") from None
    except Exception as e:  # a damaged file can make a decoder plugin raise anything
        raise BadImageError(path, f"{type(e).__name__}: {e}") from None
    try:
        rgb = to_rgb(img)
    except ValueError as e:  # a mode Pillow cannot convert, e.g. LAB
        raise BadImageError(path, f"cannot convert mode {img.mode} to RGB: {e}") from None
    if border:
        width, height = rgb.size
        if width <= 2 * border or height <= 2 * border:
            raise BadImageError(path, f"{width}x{height} is too small to crop a {border}-pixel border")
        rgb = rgb.crop((border, border, width - border, height - border))
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a Pillow image of any mode to 8-bit RGB (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        mode, img = "RGBA", img.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(np.asarray(img.convert("RGBA")))
    if mode.startswith("I;16"):
        return _gray_to_rgb(np.asarray(img, dtype=np.float64) * (255.0 / 65535.0))
    if mode in ("I", "F"):
        return _gray_to_rgb(_scale_wide_values(np.asarray(img, dtype=np.float64), mode))
    return img.convert("RGB")


def _composite_on_white(rgba: np.ndarray) -> Image.Image:
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    rgb = rgba[..., :3].astype(np.float64) * alpha + WHITE * (1.0 - alpha)
    return Image.fromarray(np.rint(rgb).astype(np.uint8), "RGB")


def _scale_wide_values(values: np.ndarray, mode: str) -> np.ndarray:
    """Map mode-I or mode-F values to 0..255 without clipping."""
    low, high = float(values.min()), float(values.max())
    if mode == "I" and low >= 0 and high <= 65535:
        return values * (255.0 / 65535.0)
    if mode == "F" and low >= 0 and high <= 1:
        return values * 255.0
    if high == low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    gray8 = np.rint(gray).astype(np.uint8)
    return Image.fromarray(np.repeat(gray8[..., None], 3, axis=2), "RGB")
