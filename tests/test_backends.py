"""Extraction backends (torch, ONNX Runtime, OpenVINO): the same features in fp32, the exported
models cached and re-exported exactly when an input changes, torch when a package is missing, the
backend in the store's record; and the batch transform of array datasets equal to the PIL path."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from nolabel import record
from nolabel.config import load_config
from nolabel.errors import NolabelError
from nolabel.features import ExtractOptions, extract
from nolabel.models import backends, create
from nolabel.models.array_transform import ArrayEvalTransform, pil_coefficients
from nolabel.models.backbone import EvalTransform, Preprocessing


def _installed(backend: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in (backend, "onnx", "onnxscript"))


def _skip_unless_installed(backend: str):
    extra = "onnx" if backend == "onnxruntime" else backend
    return pytest.mark.skipif(not _installed(backend),
                              reason=f"{backend}, onnx or onnxscript is not installed (pip install 'nolabel[{extra}]')")


EXPORTED = [pytest.param(name, marks=_skip_unless_installed(name)) for name in ("onnxruntime", "openvino")]
needs_openvino = _skip_unless_installed("openvino")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test exports into its own cache."""
    monkeypatch.setenv("NOLABEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "exported"


def _model(name: str = "resnet18", seed: int = 0):
    torch.manual_seed(seed)
    return create(name, pretrained=False).eval()


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float((np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)).max())


# --------------------------------------------------------------------------- the array path

@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size, crop_fraction, shape", [
    (32, 0.875, (28, 28)),       # up-sampling grayscale (Fashion-MNIST -> a ResNet's crop)
    (96, 0.875, (28, 28)),       # the default run's resize
    (28, 1.0, (28, 28)),         # no resize at all
    (24, 0.875, (32, 32, 3)),    # down-sampling RGB (CIFAR)
    (20, 0.95, (40, 60, 3)),     # not square: the longer side scaled and truncated
    (64, 0.875, (61, 37)),
    (8, 1.0, (300, 300, 3)),     # > 32 taps per output pixel: the float64 pass
])
def test_array_transform_is_the_pil_path_bit_for_bit(interpolation, size, crop_fraction, shape):
    images = np.random.default_rng(size).integers(0, 256, (5, *shape), dtype=np.uint8)
    images[0] = 255  # clipping of bicubic overshoot at both ends
    images[1, ..., : shape[1] // 2] = 0
    transform = EvalTransform(Preprocessing(size, crop_fraction=crop_fraction, interpolation=interpolation), size)
    expected = torch.stack([transform(Image.fromarray(a).convert("RGB")) for a in images])
    batch = ArrayEvalTransform(transform, *shape[:2])
    assert torch.equal(batch(images), expected)
    pixels = batch.to_uint8(images)
    assert torch.equal(pixels.expand(-1, 3, -1, -1).permute(0, 2, 3, 1),
                       torch.stack([torch.from_numpy(transform.to_uint8(Image.fromarray(a))) for a in images]))


def test_array_normalize_is_eval_transform_normalize_for_every_value():
    transform = EvalTransform(Preprocessing(32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)), 32)
    values = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1).expand(1, 16, 16, 3).contiguous()
    batch = ArrayEvalTransform(transform, 16, 16)
    assert torch.equal(batch.normalize(values.permute(0, 3, 1, 2)), transform.normalize(values))
    assert torch.equal(batch.normalize(values[..., :1].permute(0, 3, 1, 2)), transform.normalize(values))


def test_pil_coefficients_are_fixed_point_weights_summing_to_one():
    k = pil_coefficients(28, 110, "bicubic")
    assert k.shape == (110, 28) and (k < 0).any()
    assert np.all(np.abs(k.sum(1) - (1 << 22)) <= 28)  # each rounded to the nearest 1/2^22


def test_extracting_an_array_dataset_equals_the_pil_path(tmp_path):
    """The whole extraction of an array dataset (batch transform) against per-image PIL, same backend."""
    from nolabel.data import load

    backbone = _model("cnn28")
    store = extract("digits", backbone, tmp_path / "f", progress=False,
                    options=ExtractOptions(batch_size=100, image_size=16, dtype="float32", backend="torch"))
    ds, transform = load("digits"), backbone.eval_transform(16)
    rows = range(0, len(ds), 41)
    x = torch.stack([transform(ds[i][0]) for i in rows])
    expected = backends.TorchForward(backbone)(x)
    np.testing.assert_array_equal(store.features[list(rows)], expected)


# --------------------------------------------------------------------------- backends

@pytest.mark.parametrize("backend", EXPORTED)
def test_fp32_features_equal_torch_fp32(tmp_path, backend):
    backbone = _model("resnet18")
    options = {"batch_size": 256, "image_size": 16, "dtype": "float32", "precision": "fp32"}
    reference = extract("digits", backbone, tmp_path / "torch", progress=False,
                        options=ExtractOptions(**options, backend="torch"))
    store = extract("digits", backbone, tmp_path / backend, progress=False,
                    options=ExtractOptions(**options, backend=backend))
    assert store.manifest["backend"] == backend and reference.manifest["backend"] == "torch"
    assert _relative(store.features, reference.features) < 1e-4


@pytest.mark.parametrize("backend", [pytest.param(*p.values, marks=[*p.marks, pytest.mark.slow])
                                     if p.values[0] == "onnxruntime" else p for p in EXPORTED])
def test_multilevel_model_exports_whole(backend):
    """Intermediate blocks, grid pooling and per-level L2 normalisation are all in the graph (its
    export takes torch.export's exporter: ~10 s, so only the default backend runs by default)."""
    backbone = _model("efficientnet_lite0_multilevel")
    x = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = backbone(x).numpy()
    forward = backends.load(backbone, 48, backend=backend)
    got = forward(x)
    assert got.shape == (4, 3880) and _relative(got, expected) < 1e-4
    assert forward(x[:1]).shape == (1, 3880)  # any batch size


@needs_openvino
def test_openvino_precision_is_set_explicitly():
    import openvino as ov

    backbone = _model("cnn28")
    x = torch.randn(8, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = backbone(x).numpy()
    fp32 = backends.load(backbone, 28, backend="openvino", precision="fp32")
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert _relative(fp32(x), expected) < 1e-5
    if backends.unsupported("openvino", "bf16") is None:
        bf16 = backends.load(backbone, 28, backend="openvino", precision="bf16")
        assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        assert 1e-5 < _relative(bf16(x), expected) < 5e-2
    else:
        with pytest.raises(NolabelError, match="bf16"):
            backends.load(backbone, 28, backend="openvino", precision="bf16")


def test_torch_fp32_turns_reduced_precision_off_and_bf16_autocasts():
    """fp32 means fp32 on a GPU too: cuDNN's TF32 default and a global matmul precision are
    overridden for the forward pass, then restored."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision(),
                         torch.is_autocast_enabled("cpu")))
            return x.flatten(1)

    previous = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("medium")
    try:
        x = torch.ones(2, 3, 4, 4)
        backends.TorchForward(Probe(), "fp32")(x)
        backends.TorchForward(Probe(), "bf16")(x)
        after = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    finally:
        torch.backends.cudnn.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])
    assert seen == [(False, "highest", False), (True, "medium", True)]
    assert after == (True, "medium")


def test_onnxruntime_refuses_bf16_and_gpus_run_torch():
    with pytest.raises(NolabelError, match="fp32 only|not installed|needs"):
        backends.resolve("onnxruntime", "bf16")
    with pytest.raises(NolabelError, match="CPU"):
        backends.resolve("openvino", "fp32", device="cuda")
    assert backends.resolve("auto", "fp32", device="cuda") == "torch"
    assert "onnxruntime" not in backends.RANKING["bf16"]


@pytest.mark.parametrize("backend", EXPORTED)
def test_export_is_cached_and_redone_when_an_input_changes(backend, cache, monkeypatch):
    exports = []
    real_export = backends._export

    def counting(backbone, image_size, name, precision, folder):
        exports.append((backbone.name, image_size, precision))
        return real_export(backbone, image_size, name, precision, folder)

    monkeypatch.setattr(backends, "_export", counting)
    backbone = _model("cnn28")
    first = backends.load(backbone, 28, backend=backend)
    again = backends.load(backbone, 28, backend=backend)
    assert len(exports) == 1 and first.path == again.path
    rec = record.read(first.path.parent, backends.EXPORT_RECORD)
    assert rec["inputs"]["model"] == "cnn28" and rec["inputs"]["image_size"] == 28
    assert set(rec["files"]) == set(backends._FILES[backend])
    assert all(len(digest) == 64 for digest in rec["files"].values())

    backends.load(backbone, 24, backend=backend)  # another input size
    assert len(exports) == 2
    with torch.no_grad():
        backbone.body[0].weight[0, 0, 0, 0] += 1.0  # other weights
    changed = backends.load(backbone, 28, backend=backend)
    assert len(exports) == 3 and changed.path != first.path
    backends.load(_model("resnet18"), 28, backend=backend)  # another model
    assert len(exports) == 4
    if backend == "openvino" and backends.unsupported("openvino", "bf16") is None:
        backends.load(backbone, 28, backend=backend, precision="bf16")  # another precision
        assert len(exports) == 5
    # an export altered on disk is not trusted: exported again
    count = len(exports)
    with open(changed.path.with_suffix(".bin" if backend == "openvino" else ".onnx"), "ab") as f:
        f.write(b"\0")
    backends.load(backbone, 28, backend=backend)
    assert len(exports) == count + 1
    assert not any(p.name.endswith(".tmp") for p in cache.iterdir())  # nothing half-written left


def test_auto_falls_back_to_torch_when_packages_are_missing(tmp_path, monkeypatch):
    real_import = backends._import

    def without_backends(name):
        if name in ("onnxruntime", "openvino"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name)

    monkeypatch.setattr(backends, "_import", without_backends)
    notes = []
    forward = backends.load(_model("cnn28"), 28, backend="auto", note=notes.append)
    assert forward.backend == "torch"
    assert len(notes) == 1 and "pip install" in notes[0] and "\n" not in notes[0]
    with pytest.raises(NolabelError, match=r"nolabel\[openvino\]"):
        backends.load(_model("cnn28"), 28, backend="openvino")
    said = []
    store = extract("digits", _model("cnn28"), tmp_path / "f", progress=False, log=said.append,
                    options=ExtractOptions(batch_size=512, image_size=28))
    assert store.manifest["backend"] == "torch" and any("extracting with torch" in s for s in said)


def test_auto_falls_back_when_the_export_fails(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(backends, "export_onnx", broken)
    notes = []
    forward = backends.load(_model("cnn28"), 28, backend="auto", note=notes.append)
    assert forward.backend == "torch"
    if backends.resolve("auto", "fp32", note=lambda m: None) != "torch":
        assert any("unsupported operator" in n for n in notes)
        with pytest.raises(NolabelError, match="unsupported operator"):
            backends.load(_model("cnn28"), 28, backend=backends.resolve("auto", "fp32", note=lambda m: None))


@pytest.mark.parametrize("backend", EXPORTED)
def test_the_backend_is_in_the_record(tmp_path, backend):
    backbone = _model("pixels")
    options = {"batch_size": 512, "image_size": 8, "dtype": "float32"}
    store = extract("digits", backbone, tmp_path / "f", progress=False,
                    options=ExtractOptions(**options, backend="torch"))
    first = store.fingerprint
    assert record.read(tmp_path / "f")["inputs"]["backend"] == "torch"
    with pytest.raises(NolabelError, match="backend differ"):
        extract("digits", backbone, tmp_path / "f", progress=False, options=ExtractOptions(**options, backend=backend))
    replaced = extract("digits", backbone, tmp_path / "f", progress=False, force=True,
                       options=ExtractOptions(**options, backend=backend))
    assert replaced.manifest["backend"] == backend and replaced.fingerprint != first
    assert replaced.manifest["exported_model"].startswith(str(tmp_path / "cache"))
    # "auto" is recorded as what it chose, so an unchanged choice is up to date
    chosen = backends.resolve("auto", "fp32", note=lambda m: None)
    said = []
    extract("digits", backbone, tmp_path / "f", progress=False, force=True, log=said.append,
            options=ExtractOptions(**options, backend="auto"))
    assert record.read(tmp_path / "f")["inputs"]["backend"] == chosen


@pytest.mark.parametrize("backend", EXPORTED)
def test_augmented_views_run_through_the_backend(tmp_path, backend):
    from nolabel.cluster.scan import write_augmented_views
    from nolabel.models.checkpoints import save_checkpoint
    from nolabel.store import FeatureStore

    save_checkpoint(_model("cnn28"), tmp_path / "cnn28.pt")
    views = {}
    for name in ("torch", backend):
        (path,) = write_augmented_views("digits", "cnn28", tmp_path / name, kind="strong", n_views=1, image_size=16,
                                        weights=tmp_path / "cnn28.pt", show_progress=False, backend=name)
        views[name] = FeatureStore.open(path)
        assert record.read(path)["inputs"]["backend"] == name
    assert _relative(views[backend].features, views["torch"].features) < 1e-4


@pytest.mark.parametrize("backend", EXPORTED[:1])
def test_a_run_extracts_and_writes_scans_views_on_the_configured_backend(tmp_path, backend):
    from nolabel.pipeline import run

    overrides = ["name=t", "data.train=digits", "model.name=cnn28", "extract.image_size=16", "extract.precision=fp32",
                 f"extract.backend={backend}", "pca.n_components=16", "baseline.enabled=false", "report=false",
                 "scan.epochs=1", "scan.n_heads=1", "scan.weak_views=1", "scan.strong_views=1", "scan.n_neighbors=5"]
    run(load_config(None, overrides), tmp_path / "r", progress=False)
    for store in ("features/digits", "views_weak/view0", "views_strong/view0"):
        assert record.read(tmp_path / "r" / store)["inputs"]["backend"] == backend, store


def test_config_and_cli_take_the_backend(tmp_path, capsys):
    from nolabel.cli import main

    assert load_config(overrides=["extract.backend=torch"]).extract.backend == "torch"
    with pytest.raises(NolabelError, match="extract.backend"):
        load_config(overrides=["extract.backend=tensorrt"])
    with pytest.raises(NolabelError, match="backend"):
        ExtractOptions(backend="tensorrt")
    args = ["extract", "--data", "digits", "--model", "pixels", "--image-size", "8", "--quiet",
            "--out", str(tmp_path / "f"), "--backend", "torch"]
    assert main(args) == 0
    assert record.read(tmp_path / "f")["inputs"]["backend"] == "torch"
