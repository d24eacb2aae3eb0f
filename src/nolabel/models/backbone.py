"""The one interface every backbone has: images in, one pooled feature vector per image out.

A `Backbone` wraps a network `body` whose forward already returns the pooled representation
`(B, D)` (the classifier removed: ResNets end at global average pooling, ViTs at the CLS token after
the final norm, as DINO and MoCo v3 evaluate). `body`'s state-dict keys are the canonical names that
checkpoint loading maps every published layout onto, and trainers attach their heads beside it:

    backbone = nolabel.models.create("resnet18_cifar", pretrained=False)
    head = torch.nn.Linear(backbone.feature_dim, 128)
    z = head(backbone(x))

Precision. `benchmarks/backbone_throughput.py` (batch 64, this 2-vCPU AMD EPYC with avx512_bf16,
shared with other jobs, so absolute rates are low and noisy): bf16 autocast + channels_last ran
resnet18 at 224 px 2.1x faster than fp32 (13.1 vs 6.2 img/s) and efficientnet_lite0 2.5x at 64 px
(42 vs 17) and 3.2x at 224 px (10.9 vs 3.4), at a relative feature error of 4e-3 (resnet18) to
1.7e-2 (efficientnet_lite0). Worth offering, but not inside the Backbone: the caller that runs it
(the feature extractor) opts in with `torch.autocast("cpu", dtype=torch.bfloat16)` and
`backbone.to(memory_format=torch.channels_last)`, which work on every Backbone unchanged, and
keeps fp32 as the default so stored features stay reproducible. Hence no `precision` option here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .checkpoints import LoadReport

import torch.nn as nn

from ..errors import NolabelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a network: its default resolution, crop and normalisation.

    `crop_fraction` is the ImageNet convention: the shorter side is resized to
    round(crop / crop_fraction) (0.875: 256 -> 224) before the centre crop; 1.0 for small
    native-resolution models (28x28, 32x32) whose images are used whole.
    """

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")


class EvalTransform:
    """Deterministic evaluation transform: resize the shorter side, centre crop, normalise.

    Split in two so the expensive PIL part runs in DataLoader workers and the cheap arithmetic runs
    once per batch on the device:

    - `to_uint8(pil_image) -> np.ndarray uint8 (S, S, 3)`: RGB conversion, resize of the shorter side
      to round(S / crop_fraction) with PIL's antialiased BILINEAR or BICUBIC filter (the model's
      `interpolation`: bilinear for ResNets as in torchvision/timm, bicubic for ViTs and
      EfficientNets as their authors evaluate), centre crop S x S. Pixel-identical to torchvision's
      `Resize(r)` + `CenterCrop(S)` on PIL images.
    - `normalize(uint8 Tensor (B, S, S, 3)) -> float32 Tensor (B, 3, S, S)`: (x / 255 - mean) / std.
    - `__call__(pil_image) -> float32 Tensor (3, S, S)`: both.
    """

    def __init__(self, preprocessing: Preprocessing, image_size: int | None = None):
        self.image_size = int(image_size or preprocessing.input_size)
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.mean = tuple(float(m) for m in preprocessing.mean)
        self.std = tuple(float(s) for s in preprocessing.std)
        self.crop_fraction = preprocessing.crop_fraction
        self.interpolation = preprocessing.interpolation
        self.resize_to = round(self.image_size / self.crop_fraction)

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        from PIL import Image

        image = image.convert("RGB")
        width, height = image.size
        # torchvision's Resize(int) rule: the shorter side becomes resize_to, the longer one is
        # scaled and truncated, so our crops match its reference pixel for pixel.
        if width <= height:
            size = (self.resize_to, int(self.resize_to * height / width))
        else:
            size = (int(self.resize_to * width / height), self.resize_to)
        if size != (width, height):
            resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
            image = image.resize(size, resample=resample)
        crop = self.image_size
        left = int(round((size[0] - crop) / 2.0))
        top = int(round((size[1] - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
        return np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected a uint8 tensor (B, H, W, 3), got {batch.dtype} {tuple(batch.shape)}")
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous()

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        return self.normalize(torch.from_numpy(self.to_uint8(image))[None])[0]

    def describe(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize_shorter_side_to": self.resize_to,
            "crop_fraction": self.crop_fraction,
            "interpolation": self.interpolation,
            "crop": "center",
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def __repr__(self) -> str:
        return f"EvalTransform({self.describe()})"


class Backbone(nn.Module):
    """A feature extractor: float Tensor (B, 3, H, W), normalised -> Tensor (B, feature_dim).

    Attributes: `name` (registry name, with its weight tag if any), `architecture` (without it),
    `body` (the network; its
    state-dict keys are what checkpoints load into), `feature_dim`, `preprocessing`
    (`input_size`, `mean`, `std` are shortcuts to it), `head_keys` (key prefixes of the classifier
    a checkpoint of this architecture may carry, dropped on load), `load_report` (None for random
    weights, else the `LoadReport` of the checkpoint loaded).
    """

    def __init__(self, name: str, body: nn.Module, feature_dim: int, preprocessing: Preprocessing,
                 head_keys: tuple[str, ...] = ()):
        super().__init__()
        self.name = name
        self.architecture = name  # `name` without a weight tag; set by `create`
        self.body = body
        self.feature_dim = int(feature_dim)
        self.preprocessing = preprocessing
        self.head_keys = tuple(head_keys)
        self.load_report: LoadReport | None = None

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.preprocessing.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    @classmethod
    def from_timm(cls, timm_name: str, **kwargs) -> "Backbone":
        """Any timm model, classifier removed (`num_classes=0`), never downloading weights."""
        from .._compat import import_timm

        timm = import_timm()
        try:
            body = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
        except RuntimeError as e:  # timm's "Unknown model"
            raise NolabelError(f"timm has no model {timm_name!r} ({e})") from None
        cfg = body.pretrained_cfg
        classifiers = cfg.get("classifier") or ()
        head_keys = tuple(f"{c}." for c in ([classifiers] if isinstance(classifiers, str) else classifiers))
        preprocessing = Preprocessing(
            int(cfg.get("input_size", (3, 224, 224))[-1]), tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            tuple(cfg.get("std", (0.229, 0.224, 0.225))), float(cfg.get("crop_pct", 0.875)),
            "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear")
        return cls(f"timm:{timm_name}", body, body.num_features, preprocessing, head_keys=head_keys)

    def eval_transform(self, image_size: int | None = None) -> EvalTransform:
        return EvalTransform(self.preprocessing, image_size)

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for run manifests."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "feature_dim": self.feature_dim,
            "preprocessing": asdict(self.preprocessing),
            "weights": self.load_report.as_dict() if self.load_report else None,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}"
