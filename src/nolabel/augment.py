"""Batched image augmentations on tensors, with per-sample random parameters.

Per-image PIL/torchvision augmentation costs ~2 ms an image on this CPU (hue jitter alone), more than
a training step of a small network, so every augmentation here works on a whole batch at once:
geometric ones build one affine matrix per sample and resample the batch with a single
`grid_sample`; photometric ones broadcast per-sample factors. Images are float tensors
`(B, C, H, W)` in [0, 1] with C = 1 (grayscale) or 3 (RGB); every function returns the same layout
(normalisation to a network's mean/std is the caller's, after augmenting).

Randomness comes from an optional `torch.Generator`, so a seeded pipeline is reproducible.

The pipelines used by the training stages:

- `SimCLRAugment`: random resized crop, horizontal flip, colour jitter, random grayscale (SimCLR,
  SCAN's pretext step);
- `WeakAugment`: random crop with padding (translation) + flip (SCAN's neighbour-consistency step);
- `StrongAugment`: weak + `n_ops` random RandAugment-style operations + Cutout (self-labeling).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Generator = torch.Generator | None


def to_float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, 3) array -> float32 (B, C, H, W) in [0, 1] (C = 1 or 3)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
        raise ValueError(f"expected uint8 images (B, H, W) or (B, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0).contiguous()


def _uniform(n: int, low: float, high: float, generator: Generator, device=None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator: Generator, device=None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _check_images(images: torch.Tensor) -> None:
    if not torch.is_floating_point(images) or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected float images (B, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")


# --------------------------------------------------------------------------- geometry

def affine(images: torch.Tensor, theta: torch.Tensor, size: int | tuple[int, int] | None = None,
           fill: float = 0.0) -> torch.Tensor:
    """Resample each image through its own affine map.

    theta: (B, 2, 3), mapping output coordinates to input coordinates, both normalised to [-1, 1]
    (the convention of `torch.nn.functional.affine_grid`). Pixels sampled from outside the image
    take the value `fill`.
    """
    b, c, h, w = images.shape
    out_h, out_w = (size, size) if isinstance(size, int) else (size or (h, w))
    grid = F.affine_grid(theta.to(images.dtype), [b, c, out_h, out_w], align_corners=False)
    if fill == 0.0:
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Shift so that zero padding becomes `fill`.
    return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def random_resized_crop_params(n: int, scale: tuple[float, float] = (0.2, 1.0),
                               ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.0,
                               generator: Generator = None) -> torch.Tensor:
    """Affine matrices (n, 2, 3) of random crops covering `scale` of the area with aspect `ratio`.

    Like torchvision's RandomResizedCrop, the area fraction is uniform in `scale` and the aspect
    ratio log-uniform in `ratio`; instead of rejection sampling, a side longer than the image is
    clipped to it (one pass for the whole batch). A horizontal flip with probability `flip_p` is
    folded into the same matrix.
    """
    area = _uniform(n, scale[0], scale[1], generator)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    # Centre anywhere the crop stays inside the image, in normalised coordinates.
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    sign = torch.where(_bernoulli(n, flip_p, generator), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = height
    theta[:, 1, 2] = cy
    return theta


def random_resized_crop(images: torch.Tensor, size: int, scale: tuple[float, float] = (0.2, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip_p: float = 0.0,
                        generator: Generator = None) -> torch.Tensor:
    """Random resized crop (+ optional horizontal flip) of every image, output `size` x `size`."""
    _check_images(images)
    theta = random_resized_crop_params(len(images), scale, ratio, flip_p, generator).to(images.device)
    return affine(images, theta, size)


def horizontal_flip(images: torch.Tensor, p: float = 0.5, generator: Generator = None) -> torch.Tensor:
    """Flip each image left-right with probability `p`."""
    flip = _bernoulli(len(images), p, generator).to(images.device)
    out = images.clone()
    out[flip] = images[flip].flip(-1)
    return out


def random_translate(images: torch.Tensor, max_fraction: float, generator: Generator = None,
                     fill: float = 0.0) -> torch.Tensor:
    """Shift each image by up to `max_fraction` of its side in x and y (padding-and-crop)."""
    n, _, h, w = images.shape
    # Whole-pixel shifts, as a padded random crop does (normalised: 2 / side per pixel).
    dx = torch.randint(-round(max_fraction * w), round(max_fraction * w) + 1, (n,), generator=generator) * 2.0 / w
    dy = torch.randint(-round(max_fraction * h), round(max_fraction * h) + 1, (n,), generator=generator) * 2.0 / h
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = dx
    theta[:, 1, 2] = dy
    return affine(images, theta.to(images.device), fill=fill)


# --------------------------------------------------------------------------- colour

def gray(images: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601), shape (B, 1, H, W); grayscale images are returned as they are."""
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """other + factor * (images - other), per-sample factor (B,), clamped to [0, 1]."""
    return (other + factor.view(-1, 1, 1, 1) * (images - other)).clamp_(0, 1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(images, torch.zeros_like(images), factor)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = gray(images).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(images, mean.expand_as(images), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    return _blend(images, gray(images).expand_as(images), factor)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma of each image by `shift` turns (in [-0.5, 0.5]).

    A rotation in YIQ space: one 3x3 matrix per image instead of torchvision's RGB -> HSV -> RGB
    round trip. It keeps luma exactly and differs from the HSV hue shift by a few percent in colour.
    """
    if images.shape[1] == 1:
        return images
    rgb_to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq_to_rgb = torch.linalg.inv(rgb_to_yiq)
    angle = shift.to(images) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(len(images), 3, 3, dtype=images.dtype, device=images.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrix = yiq_to_rgb @ rotation @ rgb_to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrix, images).clamp_(0, 1)


def color_jitter(images: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                 hue: float = 0.1, p: float = 0.8, generator: Generator = None) -> torch.Tensor:
    """With probability `p` per image, jitter brightness, contrast, saturation and hue.

    Factors are uniform in [1 - s, 1 + s] (hue shift in [-hue, hue] turns), as in torchvision's
    ColorJitter, applied in that fixed order. Saturation and hue leave grayscale images unchanged.
    """
    _check_images(images)
    n = len(images)
    apply = _bernoulli(n, p, generator).to(images.device)

    def factors(strength: float) -> torch.Tensor:
        f = _uniform(n, 1 - strength, 1 + strength, generator).to(images)
        return torch.where(apply, f, torch.ones_like(f))

    out = images
    if brightness:
        out = adjust_brightness(out, factors(brightness))
    if contrast:
        out = adjust_contrast(out, factors(contrast))
    if saturation and images.shape[1] == 3:
        out = adjust_saturation(out, factors(saturation))
    if hue and images.shape[1] == 3:
        shift = _uniform(n, -hue, hue, generator).to(images)
        out = adjust_hue(out, torch.where(apply, shift, torch.zeros_like(shift)))
    return out


def random_grayscale(images: torch.Tensor, p: float = 0.2, generator: Generator = None) -> torch.Tensor:
    """Replace each RGB image by its luma (kept 3-channel) with probability `p`."""
    if images.shape[1] == 1:
        return images
    chosen = _bernoulli(len(images), p, generator).to(images.device)
    out = images.clone()
    out[chosen] = gray(images[chosen]).expand(-1, 3, -1, -1)
    return out


def cutout(images: torch.Tensor, size: int, fill: float = 0.5, generator: Generator = None) -> torch.Tensor:
    """Fill one `size` x `size` square per image (centre uniform over the image, clipped at borders)."""
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator).to(images.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator).to(images.device)
    rows = torch.arange(h, device=images.device).view(1, h, 1)
    cols = torch.arange(w, device=images.device).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return torch.where(inside[:, None], torch.full_like(images, fill), images)


# --------------------------------------------------------------------------- RandAugment-style ops

def _autocontrast(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1.0 / (high - low).clamp(min=1e-6), torch.ones_like(high))
    return ((x - low) * scale).clamp_(0, 1)


def _equalize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels, PIL's rule, batched with scatter_add."""
    b, c, h, w = x.shape
    levels = (x * 255).round().long().clamp_(0, 255).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device, dtype=torch.long).scatter_add_(1, levels, torch.ones_like(levels))
    last_level = torch.where(hist > 0, torch.arange(256, device=x.device), -1).amax(1, keepdim=True)
    step = (h * w - hist.gather(1, last_level)) // 255
    before = hist.cumsum(1) - hist  # pixels strictly below each level
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp_(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))  # flat image: unchanged
    return lut.gather(1, levels).view(b, c, h, w).to(x.dtype) / 255


def _solarize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    threshold = (1 - magnitude).view(-1, 1, 1, 1)  # magnitude 0: threshold 1, nothing inverted
    return torch.where(x >= threshold, 1 - x, x)


def _posterize(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    bits = (8 - (magnitude * 4).round()).view(-1, 1, 1, 1)  # 8 .. 4 bits
    step = 2 ** (8 - bits)
    return torch.floor(x * 255 / step) * step / 255


def _enhance(adjust: Callable) -> Callable:
    # PIL's ImageEnhance factors: 1 is the identity; RandAugment uses 1 +- 0.9 * magnitude.
    def op(x: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        return adjust(x, 1 + 0.9 * magnitude * sign)
    return op


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    kernel = x.new_tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    c = x.shape[1]
    smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3), groups=c)
    return _blend(x, smooth, factor)


def _geometric(kind: str) -> Callable:
    def op(x: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        n = len(x)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        m = magnitude * sign
        if kind == "rotate":
            angle = m * math.radians(30)
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        elif kind == "shear_x":
            theta[:, 0, 1] = m * 0.3
        elif kind == "shear_y":
            theta[:, 1, 0] = m * 0.3
        elif kind == "translate_x":
            theta[:, 0, 2] = m * 0.3 * 2  # up to 30% of the side (normalised coordinates span 2)
        else:
            theta[:, 1, 2] = m * 0.3 * 2
        return affine(x, theta, fill=0.5)
    return op


def _signed(op: Callable) -> Callable:
    def signed(x: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        return op(x, magnitude)
    return signed


# name -> op(images, magnitude in [0, 1] (B,), sign +-1 (B,)) -> images
RAND_AUGMENT_OPS: dict[str, Callable] = {
    "identity": lambda x, m, s: x,
    "autocontrast": _signed(_autocontrast),
    "equalize": _signed(_equalize),
    "solarize": _signed(_solarize),
    "posterize": _signed(_posterize),
    "brightness": _enhance(adjust_brightness),
    "contrast": _enhance(adjust_contrast),
    "color": _enhance(adjust_saturation),
    "sharpness": _enhance(_sharpness),
    "rotate": _geometric("rotate"),
    "shear_x": _geometric("shear_x"),
    "shear_y": _geometric("shear_y"),
    "translate_x": _geometric("translate_x"),
    "translate_y": _geometric("translate_y"),
}


def rand_augment(images: torch.Tensor, n_ops: int = 4, ops: Sequence[str] | None = None,
                 magnitude: tuple[float, float] = (0.0, 1.0), generator: Generator = None) -> torch.Tensor:
    """Apply `n_ops` operations drawn at random per image, each at a random magnitude.

    As in the RandAugment variant SCAN and FixMatch use: every image draws its own ops from `ops`
    (default: all of `RAND_AUGMENT_OPS`) and a magnitude uniform in `magnitude` (fractions of each
    op's maximum: 30 degrees of rotation, 0.3 shear, 30% translation, 4 bits of posterization, ...).
    """
    _check_images(images)
    names = list(ops or RAND_AUGMENT_OPS)
    unknown = [o for o in names if o not in RAND_AUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown augmentation ops {unknown}; known: {sorted(RAND_AUGMENT_OPS)}")
    n = len(images)
    out = images
    for _ in range(n_ops):
        choice = torch.randint(0, len(names), (n,), generator=generator)
        strength = _uniform(n, magnitude[0], magnitude[1], generator).to(images)
        sign = torch.where(_bernoulli(n, 0.5, generator), 1.0, -1.0).to(images)
        out = out.clone()
        for k, name in enumerate(names):
            idx = (choice == k).nonzero().flatten().to(images.device)
            if len(idx):
                out[idx] = RAND_AUGMENT_OPS[name](out[idx], strength[idx], sign[idx])
    return out


# --------------------------------------------------------------------------- pipelines

class SimCLRAugment:
    """SimCLR's view generator: random resized crop + flip, colour jitter, random grayscale.

    Defaults follow SimCLR/SCAN (crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale
    p 0.2). On 1-channel images saturation, hue and grayscale are no-ops, so only the crop, flip,
    brightness and contrast act: the "sensible variant" for 28x28 grayscale data.
    `__call__(images (B, C, H, W) in [0, 1]) -> (B, C, size, size)`.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), flip_p: float = 0.5,
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1,
                 jitter_p: float = 0.8, grayscale_p: float = 0.2):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.size, self.scale, self.flip_p = int(size), tuple(scale), flip_p
        self.jitter = dict(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=jitter_p)
        self.grayscale_p = grayscale_p

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        x = random_resized_crop(images, self.size, self.scale, flip_p=self.flip_p, generator=generator)
        x = color_jitter(x, **self.jitter, generator=generator)
        return random_grayscale(x, self.grayscale_p, generator=generator)

    def __repr__(self) -> str:
        return f"SimCLRAugment(size={self.size}, scale={self.scale}, flip_p={self.flip_p}, jitter={self.jitter}, " \
               f"grayscale_p={self.grayscale_p})"


class WeakAugment:
    """Flip + translation by up to `translate` of the side (SCAN's 'standard' augmentation)."""

    def __init__(self, translate: float = 0.125, flip_p: float = 0.5):
        self.translate, self.flip_p = translate, flip_p

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        return random_translate(horizontal_flip(images, self.flip_p, generator), self.translate, generator)

    def __repr__(self) -> str:
        return f"WeakAugment(translate={self.translate}, flip_p={self.flip_p})"


class StrongAugment:
    """Weak augmentation, then `n_ops` RandAugment-style ops, then Cutout of `cutout_fraction` of the side."""

    def __init__(self, n_ops: int = 4, cutout_fraction: float = 0.5, translate: float = 0.125, flip_p: float = 0.5):
        self.weak = WeakAugment(translate, flip_p)
        self.n_ops, self.cutout_fraction = n_ops, cutout_fraction

    def __call__(self, images: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        x = rand_augment(self.weak(images, generator), self.n_ops, generator=generator)
        if self.cutout_fraction > 0:
            x = cutout(x, max(1, round(self.cutout_fraction * images.shape[-1])), generator=generator)
        return x

    def __repr__(self) -> str:
        return f"StrongAugment(n_ops={self.n_ops}, cutout_fraction={self.cutout_fraction}, weak={self.weak})"


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels: int = 3) -> torch.Tensor:
    """(x - mean) / std for a network taking `channels` channels; grayscale is repeated to 3 channels."""
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1)
    mean_t = images.new_tensor(mean[:channels]).view(1, -1, 1, 1)
    std_t = images.new_tensor(std[:channels]).view(1, -1, 1, 1)
    return (images - mean_t) / std_t
