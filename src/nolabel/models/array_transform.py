"""`EvalTransform` on whole batches of in-memory images, bit for bit what the PIL path computes.

Array datasets (Fashion-MNIST, CIFAR, digits, STL-10) hold uint8 images; sending each one through
PIL (`EvalTransform.to_uint8` in a DataLoader worker) costs ~170 us per image, as much as the
forward pass of a small model on two cores. `ArrayEvalTransform` does the same resize + centre crop
for a whole batch as four matrix products, then the same normalisation:

- The resize is Pillow's own algorithm (`ImagingResample`, 8 bits per channel): a horizontal
  then a vertical pass, each a weighted sum of input pixels with the filter's coefficients
  (antialiased bilinear, or bicubic with a = -0.5) rounded to 22-bit fixed point, rounded back to
  uint8 after each pass. Only the rows and columns the centre crop keeps are computed.
- A pass is exact in float32: each coefficient is split into a high and a low 11-bit half, so
  every product and partial sum is an integer below 2^24 (up to 32 taps: any up-sampling and
  down-sampling by up to ~8x for bicubic; more taps fall back to float64, also exact); the halves
  are recombined, rounded and clipped in int32 as Pillow does.
- Normalisation is `EvalTransform.normalize`'s arithmetic, element for element.

So `ArrayEvalTransform(t, H, W)(images)` equals `torch.stack([t(Image.fromarray(a)) for a in
images])` exactly (tests/test_backends.py checks it on up- and down-sampling, both filters,
grayscale and RGB, square and not): ~50 us per image on one core for Fashion-MNIST at 96 px. Grayscale images are
resized once and repeated over the three channels, as PIL's L -> RGB conversion does.
"""
from __future__ import annotations

import numpy as np
import torch

from .backbone import EvalTransform

PRECISION_BITS = 22  # Pillow's fixed point for 8-bit images: 32 - 8 - 2
_SPLIT = 11  # coefficient = high * 2^11 + low, low in [0, 2^11)
_MAX_FLOAT32_TAPS = 32  # 255 * (2^11 - 1) * 32 < 2^24: every partial sum of the low half is exact


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


def pil_coefficients(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """Pillow's resampling weights from `in_size` to `out_size` pixels as a dense (out, in) int64
    matrix in 22-bit fixed point (`precompute_coeffs` + `normalize_coeffs_8bpc` of Resample.c)."""
    fn, support = _FILTERS[interpolation]
    scale = filterscale = in_size / out_size
    if filterscale < 1.0:
        filterscale = 1.0
    support = support * filterscale
    one = 1 << PRECISION_BITS
    m = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [fn((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = sum(weights)
        for x, w in enumerate(weights):
            k = w / total if total != 0.0 else w
            m[xx, xmin + x] = int(-0.5 + k * one) if k < 0 else int(0.5 + k * one)
    return m


class _Pass:
    """One axis of the resize, restricted to the output pixels `keep` (the crop)."""

    def __init__(self, in_size: int, out_size: int, keep: slice, interpolation: str):
        self.identity = in_size == out_size
        self.keep = keep
        if self.identity:
            return
        k = pil_coefficients(in_size, out_size, interpolation)[keep]
        self.float32 = int((k != 0).sum(1).max()) <= _MAX_FLOAT32_TAPS
        bound = 255 * int(np.abs(k).sum(1).max()) + (1 << PRECISION_BITS)
        self.int_dtype = torch.int32 if bound < 2**31 else torch.int64
        if self.float32:
            self.high = torch.from_numpy((k >> _SPLIT).astype(np.float32))  # floor: low part is >= 0
            self.low = torch.from_numpy((k & ((1 << _SPLIT) - 1)).astype(np.float32))
        else:
            self.k = torch.from_numpy(k.astype(np.float64))

    def _round(self, v: torch.Tensor) -> torch.Tensor:
        return v.add_(1 << (PRECISION_BITS - 1)).bitwise_right_shift_(PRECISION_BITS).clamp_(0, 255)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Resize along dim -2 of float32 (..., H, W) holding 0..255 -> (..., kept, W) float32."""
        if self.identity:
            return x[..., self.keep, :]
        if self.float32:
            v = torch.matmul(self.high, x).to(self.int_dtype).mul_(1 << _SPLIT)
            v.add_(torch.matmul(self.low, x).to(self.int_dtype))
        else:
            v = torch.matmul(self.k, x.double()).to(torch.int64)
        return self._round(v).float()

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """Resize along dim -1 of float32 (..., H, W) -> (..., H, kept) float32."""
        if self.identity:
            return x[..., self.keep]
        if self.float32:
            v = torch.matmul(x, self.high.T).to(self.int_dtype).mul_(1 << _SPLIT)
            v.add_(torch.matmul(x, self.low.T).to(self.int_dtype))
        else:
            v = torch.matmul(x.double(), self.k.T).to(torch.int64)
        return self._round(v).float()


class ArrayEvalTransform:
    """`transform` for batches of uint8 images of one shape, (B, height, width) or (B, height, width, 3).

    `__call__(images) -> float32 Tensor (B, 3, S, S)`, normalised: exactly
    `transform.normalize(transform.to_uint8(image))` of each image (see the module docstring).
    `to_uint8(images) -> uint8 Tensor (B, C, S, S)` (C = 1 for grayscale) and `normalize` are its
    two halves, for callers that normalise elsewhere (on a GPU).
    """

    def __init__(self, transform: EvalTransform, height: int, width: int):
        self.transform = transform
        r, crop = transform.resize_to, transform.image_size
        # EvalTransform.to_uint8's geometry: the shorter side becomes resize_to, the other is
        # scaled and truncated; then the centre crop
        if width <= height:
            size = (r, int(r * height / width))
        else:
            size = (int(r * width / height), r)
        left = int(round((size[0] - crop) / 2.0))
        top = int(round((size[1] - crop) / 2.0))
        if left < 0 or top < 0:
            raise ValueError(f"a {crop}-pixel crop does not fit in {size}")
        self.horizontal = _Pass(width, size[0], slice(left, left + crop), transform.interpolation)
        self.vertical = _Pass(height, size[1], slice(top, top + crop), transform.interpolation)
        self.shape = (height, width)
        self.mean = torch.tensor(transform.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(transform.std).view(1, 3, 1, 1)

    def to_uint8(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self._resized(images).to(torch.uint8)

    def _resized(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Resized and cropped, float32 (B, C, S, S) holding the uint8 values."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim not in (3, 4) or tuple(x.shape[1:3]) != self.shape \
                or (x.ndim == 4 and x.shape[3] != 3):
            raise ValueError(f"expected uint8 images (B, {self.shape[0]}, {self.shape[1]}[, 3]), "
                             f"got {x.dtype} {tuple(x.shape)}")
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = x.float()
        # horizontal first, as Pillow does (the rounding after each pass makes the order matter)
        return self.vertical.rows(self.horizontal.columns(x))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, S, S), C = 1 or 3 (or float32 holding such values) -> float32 (B, 3, S, S):
        (x / 255 - mean) / std, the same float operations as `EvalTransform.normalize`."""
        x = pixels.to(torch.float32).div(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return torch.sub(x, self.mean.to(x.device)).div_(self.std.to(x.device))

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.normalize(self._resized(images))
