"""Checkpoint loading: every published key layout, built from a reference model, loads strictly and
gives the reference's features; heads are dropped and reported; unsafe pickles are refused."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
from safetensors.torch import save_file

import checkpoint_layouts as layouts
from checkpoint_layouts import one_torch_thread  # noqa: F401  (autouse fixture)
from nolabel.errors import NolabelError
from nolabel.models import create, read_checkpoint, save_checkpoint
from nolabel.models.weights import PUBLISHED_BY_NAME


def _reference(name: str, seed: int = 0):
    """A backbone with random weights, BN statistics included (so a mis-loaded buffer shows)."""
    torch.manual_seed(seed)
    backbone = create(name, pretrained=False).eval()
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
        for name_, p in backbone.named_parameters():
            if name_.endswith(("cls_token", "pos_embed", "reg_token", "gamma")):
                p.normal_(0, 0.1)
    return backbone


def _features(backbone, size: int, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return backbone.eval()(torch.randn(2, 3, size, size))


def _roundtrip(tmp_path, name, layout, *, allow_pickle=False, size=None, load_as=None, exact=True, reference=None):
    """Save the reference's weights in `layout`, load them by `create`, compare features and report.

    `exact`: features bit-identical (pure key renaming); otherwise float32 tolerance (layouts whose
    conversion does arithmetic, such as DINOv2's CLS-token position)."""
    reference = reference or _reference(name)
    checkpoint, heads = layout(reference.body.state_dict())
    path = _save(tmp_path / "ckpt.pth", checkpoint)
    loaded = create(load_as or name, weights=path, allow_pickle=allow_pickle)
    size = size or reference.input_size
    tolerance = {"rtol": 0, "atol": 0} if exact else {}
    torch.testing.assert_close(_features(loaded, size), _features(reference, size), **tolerance)
    report = loaded.load_report
    assert sorted(report.dropped) == sorted(heads)
    assert report.loaded == len(reference.body.state_dict())
    return report


# (architecture, layout builder, expected wrapper label, expected dialect, needs unpickling, eval size)
CASES = {
    "mocov2": ("resnet18", layouts.moco_v2, "moco", "torchvision/timm", False, 64),
    "mocov3_resnet": ("resnet18", layouts.moco_v3, "mocov3", "torchvision/timm", False, 64),
    "mocov3_vit": ("vit_tiny_patch16_224", layouts.moco_v3, "mocov3", "torchvision/timm", False, 64),
    "swav": ("resnet18", layouts.swav, "swav", "torchvision/timm", False, 64),
    "dino_resnet_hub": ("resnet18", layouts.plain, "plain", "torchvision/timm", False, 64),
    "dino_vit_hub": ("vit_tiny_patch16_224", layouts.plain, "plain", "torchvision/timm", False, 64),
    "dino_vit_full": ("vit_tiny_patch16_224", layouts.dino_full, "dino", "torchvision/timm", True, 64),
    "barlow_vicreg_full": ("resnet18", layouts.barlow_vicreg_full, "vicreg/barlowtwins", "torchvision/timm", False, 64),
    "infomin": ("resnet18", layouts.infomin, "infomin", "torchvision/timm", True, 64),
    "simclr_v1_converter": ("resnet18", layouts.simclr_v1_converter, "plain", "torchvision/timm", False, 64),
    "scan_pretext": ("resnet18_cifar", layouts.scan_pretext, "scan", "scan_cifar_resnet", False, 32),
    "scan_clustering": ("resnet18_cifar", layouts.scan_clustering, "scan", "scan_cifar_resnet", False, 32),
    "scan_selflabel": ("resnet18_cifar", layouts.scan_selflabel, "scan", "scan_cifar_resnet", False, 32),
    "deepcluster_alexnet": ("alexnet_sobel", layouts.deepcluster, "plain", "deepcluster_dataparallel", False, 224),
}


@pytest.mark.parametrize("case", list(CASES))
def test_published_layout_loads_strictly_with_reference_features(tmp_path, case):
    name, layout, wrapper, dialect, needs_pickle, size = CASES[case]
    report = _roundtrip(tmp_path, name, layout, allow_pickle=needs_pickle, size=size)
    assert (report.wrapper, report.dialect) == (wrapper, dialect)
    assert report.sha256 and len(report.sha256) == 64


def test_container_choice_is_reported(tmp_path):
    report = _roundtrip(tmp_path, "vit_tiny_patch16_224", layouts.dino_full, allow_pickle=True, size=32)
    assert report.container == "teacher"  # DINO evaluates the teacher, not the student
    assert {"student", "args", "optimizer"} <= set(report.ignored_entries)


def test_simclr_v2_converter_layout_maps_onto_torchvision_resnet50(tmp_path):
    report = _roundtrip(tmp_path, "resnet50", layouts.simclr_v2_converter, size=64)
    assert (report.container, report.dialect) == ("resnet", "simclrv2_converter")
    assert "head" in report.ignored_entries


def test_tagged_name_loads_user_file_and_keeps_record_preprocessing(tmp_path):
    report = _roundtrip(tmp_path, "resnet50", layouts.moco_v2, size=64, load_as="resnet50.mocov2_800ep")
    assert report.wrapper == "moco"
    simclr = create("resnet50.simclr_v1", pretrained=False)
    assert simclr.mean == (0.0, 0.0, 0.0) and simclr.std == (1.0, 1.0, 1.0)


def test_dinov2_layout_with_registers_matches_timm_conversion(tmp_path):
    """Our DINOv2 -> timm mapping against timm's own converter (an independent implementation)."""
    from nolabel._compat import import_timm

    timm = import_timm()
    reference = _reference("vit_small_patch14_reg4_dinov2")
    report = _roundtrip(tmp_path, reference.name, layouts.dinov2_hub, size=56, exact=False, reference=reference)
    assert report.dialect == "dinov2" and report.dropped == ["mask_token"]

    hub, _ = layouts.dinov2_hub(reference.body.state_dict())
    converted = timm.models.vision_transformer.checkpoint_filter_fn(dict(hub), reference.body)
    loaded = create(reference.name, weights=_save(tmp_path / "hub.pth", hub))
    for key, value in loaded.body.state_dict().items():
        torch.testing.assert_close(value, converted[key], rtol=0, atol=0)


@pytest.mark.slow
def test_deepcluster_vgg16_layout(tmp_path):
    _roundtrip(tmp_path, "vgg16_sobel", layouts.deepcluster, size=224)


def test_safetensors_third_party_file(tmp_path):
    reference = _reference("resnet18")
    path = tmp_path / "dino_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in reference.body.state_dict().items()}, str(path))
    loaded = create("resnet18", weights=path)
    torch.testing.assert_close(_features(loaded, 64), _features(reference, 64), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_nolabel_own_format_roundtrip(tmp_path, suffix):
    reference = _reference("cnn28")
    heads = {"projection": torch.nn.Linear(128, 16)} if suffix == ".pt" else None
    path = save_checkpoint(reference, tmp_path / f"own{suffix}", heads=heads, meta={"epoch": 3})
    loaded = create("cnn28", weights=path)
    torch.testing.assert_close(_features(loaded, 28), _features(reference, 28), rtol=0, atol=0)
    assert loaded.load_report.wrapper == "nolabel"
    if suffix == ".pt":
        saved = read_checkpoint(path)  # weights_only: our format needs no unpickling
        assert saved["meta"] == {"epoch": 3} and set(saved["heads"]["projection"]) == {"weight", "bias"}
    with pytest.raises(NolabelError, match="holds model 'cnn28', not 'resnet18'"):
        create("resnet18", weights=path)


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_missing_key_is_a_clear_error(tmp_path):
    sd = _reference("resnet18").body.state_dict()
    del sd["layer4.1.bn2.running_var"]
    with pytest.raises(NolabelError, match=r"1 missing keys \(layer4\.1\.bn2\.running_var\)"):
        create("resnet18", weights=_save(tmp_path / "m.pth", sd))


def test_unexpected_key_and_wrong_architecture_are_errors(tmp_path):
    sd = _reference("resnet18").body.state_dict()
    with pytest.raises(NolabelError, match=r"unexpected keys \(extra\.weight\)"):
        create("resnet18", weights=_save(tmp_path / "u.pth", {**sd, "extra.weight": torch.zeros(1)}))
    with pytest.raises(NolabelError, match="shape mismatches.*does not fit|missing keys"):
        create("resnet50", weights=_save(tmp_path / "r18.pth", sd))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_by_default(tmp_path):
    marker = tmp_path / "pwned"
    sd = _reference("resnet18").body.state_dict()
    path = _save(tmp_path / "evil.pth", {"state_dict": sd, "payload": _Exploit(marker)})
    with pytest.raises(NolabelError, match=r"Python objects.*allow_pickle=True.*--trust-checkpoint"):
        create("resnet18", weights=path)
    assert not marker.exists()


def test_trusted_pickle_loads_only_when_allowed(tmp_path):
    sd = _reference("resnet18").body.state_dict()
    path = _save(tmp_path / "args.pth", {"state_dict": sd, "args": argparse.Namespace(lr=0.1)})
    with pytest.raises(NolabelError, match="allow_pickle"):
        create("resnet18", weights=path)
    assert create("resnet18", weights=path, allow_pickle=True).load_report.loaded == len(sd)


def test_unreadable_and_absent_files(tmp_path):
    with pytest.raises(NolabelError, match="not found"):
        create("resnet18", weights=tmp_path / "absent.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(NolabelError, match="not a readable PyTorch checkpoint"):
        create("resnet18", weights=junk)
    with pytest.raises(NolabelError, match="found no state dict.*'epoch'"):
        create("resnet18", weights=_save(tmp_path / "meta.pth", {"epoch": 1, "lr": 0.1}))


def test_published_weight_absent_offline_names_url_and_weights_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("NOLABEL_CACHE", str(tmp_path))
    record = PUBLISHED_BY_NAME["resnet50.mocov2_800ep"]
    with pytest.raises(NolabelError, match=f"{record.url}.*--download.*--weights"):
        create("resnet50.mocov2_800ep")
    with pytest.raises(NolabelError, match="cannot be downloaded automatically.*--weights"):
        create("resnet50.infomin_800ep")


def test_download_failure_is_clear(tmp_path, monkeypatch):
    from nolabel.models import weights

    monkeypatch.setenv("NOLABEL_CACHE", str(tmp_path))
    record = weights.WeightRecord("resnet18.test", "resnet18", "plain", "http://127.0.0.1:9/w.pth", "test")
    with pytest.raises(NolabelError, match=r"could not download http://127\.0\.0\.1:9/w\.pth.*--weights"):
        weights.resolve(record, download=True)
    assert not any(tmp_path.rglob("*.pth"))  # no partial file left in the cache


def test_cached_published_weight_loads_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("NOLABEL_CACHE", str(tmp_path))
    reference = _reference("resnet18_cifar")
    record = PUBLISHED_BY_NAME["resnet18_cifar.scan_cifar10"]
    checkpoint, _ = layouts.scan_clustering(reference.body.state_dict())
    record.cached_path().parent.mkdir(parents=True)
    torch.save(checkpoint, record.cached_path())
    loaded = create("resnet18_cifar.scan_cifar10")
    torch.testing.assert_close(_features(loaded, 32), _features(reference, 32), rtol=0, atol=0)
    assert loaded.load_report.source.startswith("resnet18_cifar.scan_cifar10 (")
