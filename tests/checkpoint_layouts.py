"""Build checkpoints in the published key layouts from a backbone's own state dict.

Each function takes the canonical `backbone.body.state_dict()` and returns `(checkpoint object,
head keys)`: the object as the original training code saves it (containers, prefixes, naming, the
extra heads, momentum encoders, queues and metadata it stores), and the full keys of the state-dict
entries that are not backbone and must be reported as dropped. Layouts follow the original repos'
model and save code (see nolabel.models.weights).
"""
from __future__ import annotations

import argparse
import re

import pytest
import torch

Sd = dict[str, torch.Tensor]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests run tiny forwards; with other jobs on a 2-core machine, torch's default thread
    count made them 3x slower than one thread (measured). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _noise_like(sd: Sd) -> Sd:
    """Different tensors of the same shapes (a momentum encoder / student that must NOT be loaded)."""
    return {k: (v + 1 if v.is_floating_point() else v.clone()) for k, v in sd.items()}


def _mlp(prefix: str, dims: list[int], bn: bool = False) -> Sd:
    out = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"{prefix}{2 * i if not bn else 3 * i}.weight"] = torch.randn(b, a)
        out[f"{prefix}{2 * i if not bn else 3 * i}.bias"] = torch.randn(b)
        if bn and i < len(dims) - 2:
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{prefix}{3 * i + 1}.{name}"] = torch.rand(b)
    return out


def _optimizer() -> dict:
    return {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.03, "params": [0]}]}


def _dim(sd: Sd) -> int:
    """Feature width: the last 1-d tensor is the final norm (ViT) or BN (ResNet) of the backbone."""
    return next(v.shape[0] for v in reversed(sd.values()) if v.ndim == 1)


def moco_v2(sd: Sd) -> tuple[dict, list[str]]:
    """facebookresearch/moco main_moco.py: {'epoch', 'arch', 'state_dict': module.encoder_q/k.*, queue}."""
    d = _dim(sd)
    q = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    heads = _mlp("module.encoder_q.fc.", [d, d, 128])
    k = {f"module.encoder_k.{k}": v for k, v in _noise_like(sd).items()}
    k.update(_mlp("module.encoder_k.fc.", [d, d, 128]))
    extra = {"module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    state = {**q, **heads, **k, **extra}
    return ({"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": _optimizer()},
            [*heads, *k, *extra])


def moco_v3(sd: Sd) -> tuple[dict, list[str]]:
    """facebookresearch/moco-v3: module.base_encoder.* (+ fc./head. MLP), momentum_encoder, predictor."""
    d = _dim(sd)
    head = "head." if "cls_token" in sd else "fc."
    base = {f"module.base_encoder.{k}": v for k, v in sd.items()}
    heads = _mlp(f"module.base_encoder.{head}", [d, 64, 32], bn=True)
    momentum = {f"module.momentum_encoder.{k}": v for k, v in _noise_like(sd).items()}
    momentum.update(_mlp(f"module.momentum_encoder.{head}", [d, 64, 32], bn=True))
    predictor = _mlp("module.predictor.", [32, 64, 32], bn=True)
    return ({"epoch": 300, "arch": "vit_small", "state_dict": {**base, **heads, **momentum, **predictor},
             "optimizer": _optimizer(), "scaler": {"scale": 65536.0}}, [*heads, *momentum, *predictor])


def swav(sd: Sd) -> tuple[dict, list[str]]:
    """facebookresearch/swav hub files: flat module.* with projection_head and prototypes."""
    d = _dim(sd)
    heads = {**_mlp("module.projection_head.", [d, 64, 16], bn=True), "module.prototypes.weight": torch.randn(30, 16)}
    return {**{f"module.{k}": v for k, v in sd.items()}, **heads}, list(heads)


def plain(sd: Sd) -> tuple[dict, list[str]]:
    """DINO / Barlow Twins / VICReg hub backbone files: the backbone's own keys, nothing else."""
    return dict(sd), []


def dino_full(sd: Sd) -> tuple[dict, list[str]]:
    """facebookresearch/dino main_dino.py full checkpoint: teacher (unwrapped) and student (DDP)
    with backbone.* + head.*, plus an argparse Namespace in 'args' (so it needs unpickling)."""
    d = _dim(sd)
    head = {"head.mlp.0.weight": torch.randn(64, d), "head.mlp.0.bias": torch.randn(64),
            "head.last_layer.weight_g": torch.randn(100, 1), "head.last_layer.weight_v": torch.randn(100, 64)}
    teacher = {**{f"backbone.{k}": v for k, v in sd.items()}, **head}
    student = {f"module.backbone.{k}": v for k, v in _noise_like(sd).items()}
    student.update({f"module.{k}": v for k, v in head.items()})
    return ({"student": student, "teacher": teacher, "optimizer": _optimizer(), "epoch": 100,
             "args": argparse.Namespace(arch="vit_small", out_dim=100), "dino_loss": {"center": torch.zeros(1, 100)}},
            list(head))


def barlow_vicreg_full(sd: Sd) -> tuple[dict, list[str]]:
    """facebookresearch/barlowtwins & vicreg full checkpoints: model: module.backbone/projector (+ bn)."""
    d = _dim(sd)
    heads = {**_mlp("module.projector.", [d, 64, 64], bn=True),
             **{f"module.bn.{n}": torch.rand(64) for n in ("running_mean", "running_var")}}
    model = {**{f"module.backbone.{k}": v for k, v in sd.items()}, **heads}
    return {"epoch": 1000, "model": model, "optimizer": _optimizer()}, list(heads)


def infomin(sd: Sd) -> tuple[dict, list[str]]:
    """HobbitLong/PyContrast: {'model': module.encoder.* + module.head.* (+ head_jig), 'model_ema':
    encoder.*, 'contrast', 'optimizer', 'opt': Namespace, 'epoch'}."""
    d = _dim(sd)
    heads = {**_mlp("module.head.", [d, d, 128]), **_mlp("module.head_jig.fc1.", [d, 128])}
    model = {**{f"module.encoder.{k}": v for k, v in sd.items()}, **heads}
    ema = {f"encoder.{k}": v for k, v in _noise_like(sd).items()}
    return ({"model": model, "model_ema": ema, "contrast": {"memory": torch.randn(8, 128)},
             "optimizer": _optimizer(), "opt": argparse.Namespace(arch="resnet50", head="mlp"), "epoch": 800},
            list(heads))


def simclr_v1_converter(sd: Sd) -> tuple[dict, list[str]]:
    """tonylins/simclr-converter: {'state_dict': torchvision ResNet keys + the supervised fc}."""
    d = _dim(sd)
    fc = {"fc.weight": torch.randn(1000, d), "fc.bias": torch.randn(1000)}
    return {"state_dict": {**sd, **fc}}, list(fc)


def simclr_v2_converter(sd: Sd) -> tuple[dict, list[str]]:
    """Separius/SimCLRv2-Pytorch (bottleneck ResNets): {'resnet': net.<stage>.blocks.<i>.net.<j>...,
    'head': contrastive head}."""
    rules = [
        (r"^conv1\.", "net.0.0."), (r"^bn1\.", "net.0.1.0."),
        (r"^layer(\d)\.(\d+)\.", r"net.\1.blocks.\2."),
        (r"\.downsample\.0\.", ".projection.shortcut."), (r"\.downsample\.1\.", ".projection.bn.0."),
        (r"\.conv1\.", ".net.0."), (r"\.bn1\.", ".net.1.0."), (r"\.conv2\.", ".net.2."),
        (r"\.bn2\.", ".net.3.0."), (r"\.conv3\.", ".net.4."), (r"\.bn3\.", ".net.5.0."),
    ]
    resnet = {}
    for key, value in sd.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        resnet[key] = value
    d = _dim(sd)
    fc = {"fc.weight": torch.randn(1000, d), "fc.bias": torch.randn(1000)}
    resnet.update(fc)
    return {"resnet": resnet, "head": {"layers.0.weight": torch.randn(d, d)}}, list(fc)


def _scan_backbone(sd: Sd) -> Sd:
    return {f"backbone.{k.replace('.downsample.', '.shortcut.')}": v for k, v in sd.items()}


def scan_pretext(sd: Sd) -> tuple[dict, list[str]]:
    """SCAN simclr.py: torch.save(model.state_dict()) of ContrastiveModel (backbone + MLP head)."""
    heads = _mlp("contrastive_head.", [512, 512, 128])
    return {**_scan_backbone(sd), **heads}, list(heads)


def scan_clustering(sd: Sd) -> tuple[dict, list[str]]:
    """SCAN scan.py: {'model': ClusteringModel state dict (backbone + cluster_head.<h>), 'head': best}."""
    heads = {f"cluster_head.{h}.{n}": torch.randn(10, 512) if n == "weight" else torch.randn(10)
             for h in range(2) for n in ("weight", "bias")}
    return {"model": {**_scan_backbone(sd), **heads}, "head": 1}, list(heads)


def scan_selflabel(sd: Sd) -> tuple[dict, list[str]]:
    """SCAN selflabel.py: torch.save(model.state_dict()) of a one-head ClusteringModel."""
    heads = {"cluster_head.0.weight": torch.randn(10, 512), "cluster_head.0.bias": torch.randn(10)}
    return {**_scan_backbone(sd), **heads}, list(heads)


def deepcluster(sd: Sd) -> tuple[dict, list[str]]:
    """facebookresearch/deepcluster main.py: {'epoch', 'arch', 'state_dict', 'optimizer'}; features
    wrapped in DataParallel (features.module.*), top_layer the k-means classifier."""
    state = {re.sub(r"^features\.", "features.module.", k): v for k, v in sd.items()}
    top = {"top_layer.weight": torch.randn(100, 4096), "top_layer.bias": torch.randn(100)}
    return {"epoch": 200, "arch": "alexnet", "state_dict": {**state, **top}, "optimizer": _optimizer()}, list(top)


def dinov2_hub(timm_sd: Sd) -> tuple[dict, list[str]]:
    """facebookresearch/dinov2 hub file from a timm ViT's state dict: DINOv2 keeps the CLS position in
    pos_embed and names registers `register_tokens`; it also stores the iBOT `mask_token`."""
    sd = dict(timm_sd)
    mask = {"mask_token": torch.randn(1, sd["cls_token"].shape[-1])}
    if "reg_token" in sd:
        cls_pos = torch.randn_like(sd["cls_token"])
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
        sd["cls_token"] = sd["cls_token"] - cls_pos
    return {**sd, **mask}, list(mask)
