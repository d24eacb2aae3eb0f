"""Dataset readers: official file formats built in tmp_path, the real Fashion-MNIST, image decoding."""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from data_fixtures import (
    save_png, write_cifar10, write_cifar100, write_idx, write_mnist_folder, write_objectnet, write_stl10,
)
from nolabel.data import BadImageError, list_specs, load, open_image, parse_spec, to_rgb
from nolabel.data import mnist as mnist_module
from nolabel.errors import NolabelError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def rng_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --- spec grammar -----------------------------------------------------------------------------

def test_spec_grammar_split_path_and_both():
    assert (parse_spec("fashion-mnist:test").root, parse_spec("fashion-mnist:test").split) == (None, "test")
    assert parse_spec("fashion-mnist").split == "all"
    req = parse_spec("fashion-mnist:/some/dir:test")
    assert (req.root, req.split) == (Path("/some/dir"), "test")
    req = parse_spec("fashion-mnist:/some/dir")
    assert (req.root, req.split) == (Path("/some/dir"), "all")
    req = parse_spec("stl10:/d:train+unlabeled")
    assert (req.root, req.split) == (Path("/d"), "train+unlabeled")
    assert parse_spec("folder:/a:b").root == Path("/a:b")  # no splits: the rest is the path
    assert parse_spec("imagenet:/x").split == "train"


@pytest.mark.parametrize("spec, message", [
    ("nosuch:/x", "valid specs: fashion-mnist"),
    ("cifar10", "cifar10 needs a folder"),
    ("cifar10:/nowhere:tset", "'tset' is not a split of cifar10 (valid: train, test, all)"),
    ("fashion-mnist:tset", "nor an existing folder"),
    ("cifar10:/nowhere/at/all", "/nowhere/at/all does not exist"),
    ("digits:train", "digits takes no path or split"),
])
def test_spec_errors(spec, message):
    with pytest.raises(NolabelError) as info:
        load(spec)
    assert message in str(info.value)


def test_on_bad_image_is_validated_and_stored():
    with pytest.raises(NolabelError, match="on_bad_image"):
        load("digits", on_bad_image="ignore")
    assert load("digits", on_bad_image="fail").on_bad_image == "fail"


# --- IDX: MNIST, Fashion-MNIST ----------------------------------------------------------------

def _mnist_parts():
    return {"train": (rng_images(1, (5, 28, 28)), np.array([3, 1, 4, 1, 5], np.uint8)),
            "t10k": (rng_images(2, (3, 28, 28)), np.array([9, 2, 6], np.uint8))}


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_folder(tmp_path, gz):
    parts = _mnist_parts()
    write_mnist_folder(tmp_path, parts, gz=gz)
    ds = load(f"mnist:{tmp_path}")
    np.testing.assert_array_equal(ds.images, np.concatenate([parts["train"][0], parts["t10k"][0]]))
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [3, 1, 4, 1, 5, 9, 2, 6]
    assert ds.item_names[4:6] == ["train/4", "test/0"] and ds.classes == [str(d) for d in range(10)]
    image, label = ds[6]
    assert label == 2
    np.testing.assert_array_equal(pixels(image), np.repeat(parts["t10k"][0][1][..., None], 3, axis=2))
    test = load(f"mnist:{tmp_path}:test")
    assert len(test) == 3 and test.item_names[0] == "test/0"
    np.testing.assert_array_equal(test.images, parts["t10k"][0])


def test_idx_dotted_names_are_found(tmp_path):
    parts = _mnist_parts()
    for prefix, (images, labels) in parts.items():
        write_idx(tmp_path / f"{prefix}-images.idx3-ubyte", images)
        write_idx(tmp_path / f"{prefix}-labels.idx1-ubyte", labels)
    assert len(load(f"mnist:{tmp_path}")) == 8


def test_idx_validation(tmp_path):
    parts = _mnist_parts()
    write_mnist_folder(tmp_path, parts, gz=False)
    labels_file = tmp_path / "t10k-labels-idx1-ubyte"
    labels_file.write_bytes(labels_file.read_bytes()[:-1])  # one label short of its header
    with pytest.raises(NolabelError, match="t10k-labels-idx1-ubyte: IDX header announces shape"):
        load(f"mnist:{tmp_path}")
    # a labels file where the images file should be: wrong magic number
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(NolabelError, match="not an IDX file with magic number 00000803"):
        load(f"mnist:{tmp_path}:test")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", parts["t10k"][0])
    write_idx(labels_file, np.array([1, 2], np.uint8))
    with pytest.raises(NolabelError, match="3 images but t10k-labels-idx1-ubyte 2 labels"):
        load(f"mnist:{tmp_path}:test")
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(NolabelError, match=r"missing train-images-idx3-ubyte\[.gz\]"):
        load(f"mnist:{tmp_path}")


@pytest.fixture
def no_default_fashion_mnist(tmp_path, monkeypatch):
    """Hide every default Fashion-MNIST location: $NOLABEL_DATA empty, HOME empty, no system folder."""
    monkeypatch.setenv("NOLABEL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NOLABEL_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setattr(mnist_module, "SYSTEM_DIRS", (tmp_path / "system",))
    return tmp_path


def test_fashion_mnist_without_files_or_permission_says_where_it_looked(no_default_fashion_mnist):
    tmp_path = no_default_fashion_mnist
    with pytest.raises(NolabelError) as info:
        load("fashion-mnist:test")
    message = str(info.value)
    for folder in (tmp_path / "data" / "fashion-mnist", tmp_path / "data", tmp_path / "system"):
        assert str(folder) in message
    assert "allow_download=True" in message and "NOLABEL_ALLOW_DOWNLOAD=1" in message
    assert [r.available for r in list_specs() if r.pattern.startswith("fashion-mnist")] == [False]


def test_fashion_mnist_download_needs_permission_and_checks_md5(no_default_fashion_mnist, monkeypatch):
    """No network here: a fake server answers with the wrong bytes, which must be rejected."""
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(b"not the published file")

    monkeypatch.setattr(mnist_module.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(NolabelError, match="allow_download=True"):
        load("fashion-mnist")
    assert requested == []
    monkeypatch.setenv("NOLABEL_ALLOW_DOWNLOAD", "1")
    with pytest.raises(NolabelError, match="differs from the published 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        load("fashion-mnist")
    assert requested == [base + "train-images-idx3-ubyte.gz" for base in mnist_module.FASHION_MNIST_URLS]
    download_dir = no_default_fashion_mnist / "data" / "fashion-mnist"
    assert not any(download_dir.iterdir())  # nothing half-written is left behind


def test_fashion_mnist_partial_folder_names_the_missing_file(no_default_fashion_mnist):
    folder = no_default_fashion_mnist / "system"
    write_mnist_folder(folder, {"train": _mnist_parts()["train"]}, gz=True)
    assert len(load("fashion-mnist:train")) == 5
    with pytest.raises(NolabelError, match=r"system \(missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte\)"):
        load("fashion-mnist:test")
    with pytest.raises(NolabelError, match="missing t10k-images-idx3-ubyte"):
        load(f"fashion-mnist:{folder}:all")


def test_fashion_mnist_lookup_prefers_nolabel_data(no_default_fashion_mnist):
    tmp_path = no_default_fashion_mnist
    mine, system = _mnist_parts(), {k: (v[0] // 2, v[1]) for k, v in _mnist_parts().items()}
    write_mnist_folder(tmp_path / "data" / "fashion-mnist", mine, gz=True)
    write_mnist_folder(tmp_path / "system", system, gz=True)
    ds = load("fashion-mnist:train")
    np.testing.assert_array_equal(ds.images, mine["train"][0])
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("NOLABEL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    ds = load("fashion-mnist")
    assert ds.images.shape == (70000, 28, 28) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist() == [7000] * 10
    # MD5s of the uncompressed official files (published with the dataset): header + our arrays
    test_images = struct.pack(">IIII", 0x803, 10000, 28, 28) + ds.images[60000:].tobytes()
    test_labels = struct.pack(">II", 0x801, 10000) + ds.labels[60000:].astype(np.uint8).tobytes()
    train_images = struct.pack(">IIII", 0x803, 60000, 28, 28) + ds.images[:60000].tobytes()
    assert hashlib.md5(test_images).hexdigest() == "8181f5470baa50b63fa0f6fddb340f0a"
    assert hashlib.md5(test_labels).hexdigest() == "15d484375f8d13e6eb1aabb0c3f46965"
    assert hashlib.md5(train_images).hexdigest() == "f4a8712d7a061bf5bd6d2ca38dc4d50a"
    assert ds.item_names[60000] == "test/0" and ds[60000][1] == 9  # the test set opens with an ankle boot


def test_digits_match_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load("digits")
    assert ds.images.shape == (1797, 8, 8) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, ref.target)
    # 0..16 scaled to 0..255: back-scaling recovers sklearn's values to within rounding
    np.testing.assert_allclose(ds.images * (16 / 255), ref.images, atol=0.5 * 16 / 255)
    assert ds.images[ref.images == 16].min() == 255 and ds.images[ref.images == 0].max() == 0


# --- CIFAR -------------------------------------------------------------------------------------

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_pickles(tmp_path):
    train = [(rng_images(10 + i, (2, 32, 32, 3)), [i, (i + 3) % 10]) for i in range(5)]
    test = (rng_images(20, (3, 32, 32, 3)), [9, 8, 7])
    folder = write_cifar10(tmp_path, train, test, CIFAR10_NAMES)
    ds = load(f"cifar10:{tmp_path}")
    assert len(ds) == 13 and ds.classes == CIFAR10_NAMES
    np.testing.assert_array_equal(ds.images, np.concatenate([t[0] for t in train] + [test[0]]))
    assert ds.labels.tolist() == [x for t in train for x in t[1]] + [9, 8, 7]
    assert ds.item_names[:3] == ["train/0", "train/1", "train/2"] and ds.item_names[10] == "test/0"
    np.testing.assert_array_equal(pixels(ds[3][0]), train[1][0][1])
    # the batches folder itself works too, and splits select
    only_test = load(f"cifar10:{folder}:test")
    np.testing.assert_array_equal(only_test.images, test[0])
    assert len(load(f"cifar10:{folder}:train")) == 10


def test_cifar100_fine_and_coarse(tmp_path):
    images = rng_images(30, (4, 32, 32, 3))
    fine, coarse = [0, 99, 50, 1], [4, 19, 0, 1]
    fine_names = [f"fine{i}" for i in range(100)]
    coarse_names = [f"coarse{i}" for i in range(20)]
    write_cifar100(tmp_path, {"train": (images[:3], fine[:3], coarse[:3]), "test": (images[3:], fine[3:], coarse[3:])},
                   fine_names, coarse_names)
    ds = load(f"cifar100:{tmp_path}")
    assert ds.labels.tolist() == fine and ds.classes == fine_names
    np.testing.assert_array_equal(ds.images, images)
    superclasses = load(f"cifar100-20:{tmp_path}:test")
    assert superclasses.labels.tolist() == [1] and superclasses.classes == coarse_names
    np.testing.assert_array_equal(superclasses.images[0], images[3])


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cifar_pickle_is_refused(tmp_path):
    write_cifar10(tmp_path, [(rng_images(1, (1, 32, 32, 3)), [0])] * 5, (rng_images(2, (1, 32, 32, 3)), [1]),
                  CIFAR10_NAMES)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": _RunsCode(marker), "labels": [0]}, f, protocol=2)
    with pytest.raises(NolabelError, match=r"refusing to unpickle (posix|os)\.system"):
        load(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_cifar_missing_files(tmp_path):
    with pytest.raises(NolabelError, match="no batches.meta in .*cifar-10-batches-py or"):
        load(f"cifar10:{tmp_path}")
    write_cifar10(tmp_path, [(rng_images(1, (1, 32, 32, 3)), [0])] * 5, (rng_images(2, (1, 32, 32, 3)), [1]),
                  CIFAR10_NAMES)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(NolabelError, match="data_batch_3: file not found"):
        load(f"cifar10:{tmp_path}:train")


# --- STL-10 ------------------------------------------------------------------------------------

def test_stl10_binary_orientation_and_splits(tmp_path):
    train, test, unlabeled = rng_images(40, (2, 96, 96, 3)), rng_images(41, (3, 96, 96, 3)), rng_images(42, (2, 96, 96, 3))
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    folder = write_stl10(tmp_path, {"train": (train, [1, 10]), "test": (test, [2, 3, 4]), "unlabeled": (unlabeled, None)},
                         names)
    raw = (folder / "train_X.bin").read_bytes()
    # the format itself: the first 96 bytes are the red plane's leftmost column, top to bottom
    assert raw[:96] == train[0, :, 0, 0].tobytes()
    ds = load(f"stl10:{tmp_path}")
    assert ds.labels.tolist() == [0, 9] and ds.classes == names
    np.testing.assert_array_equal(ds.images, train)
    np.testing.assert_array_equal(pixels(ds[1][0]), train[1])
    both = load(f"stl10:{folder}:train+unlabeled")
    assert both.labels.tolist() == [0, 9, -1, -1] and both.item_names[2] == "unlabeled/0"
    np.testing.assert_array_equal(both.images[2:], unlabeled)
    assert load(f"stl10:{tmp_path}:test").labels.tolist() == [1, 2, 3]
    (folder / "test_y.bin").write_bytes(bytes([0, 1, 2]))
    with pytest.raises(NolabelError, match="labels must be 1..10"):
        load(f"stl10:{tmp_path}:test")


# --- image decoding ------------------------------------------------------------------------------

def _mode_images() -> dict[str, tuple[Image.Image, np.ndarray]]:
    """{file name: (image in that mode, expected RGB pixels)} for the modes files come in."""
    cases = {}
    gray = np.array([[0, 50], [200, 255]], np.uint8)
    cases["gray.png"] = (Image.fromarray(gray, "L"), np.repeat(gray[..., None], 3, 2))
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    cases["palette.gif"] = (palette, np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8))
    transparent = palette.copy()
    transparent.info["transparency"] = 1
    cases["palette_transparent.png"] = (transparent, np.array([[[255, 0, 0], [255, 255, 255]]], np.uint8))
    cmyk = Image.frombytes("CMYK", (3, 1), bytes([255, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0, 0]))
    cases["cmyk.tif"] = (cmyk, np.array([[[0, 255, 255], [0, 0, 0], [255, 255, 255]]], np.uint8))
    wide = np.array([[0, 1000], [32768, 65535]], np.uint16)
    expected_wide = np.array([[0, 4], [128, 255]], np.uint8)  # v * 255 / 65535, not clipped at 255
    cases["sixteen.png"] = (Image.fromarray(wide), np.repeat(expected_wide[..., None], 3, 2))
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], np.uint8)
    cases["rgba.png"] = (Image.fromarray(rgba, "RGBA"), np.array([[[255, 255, 255], [255, 0, 0], [127, 127, 127]]], np.uint8))
    la = Image.fromarray(np.array([[[0, 128], [200, 255]]], np.uint8), "LA")
    cases["la.png"] = (la, np.array([[[127] * 3, [200] * 3]], np.uint8))
    bits = Image.fromarray(np.array([[False, True]]))
    cases["bits.bmp"] = (bits, np.array([[[0] * 3, [255] * 3]], np.uint8))
    return cases


@pytest.fixture
def messy_folder(tmp_path):
    """Good images in many modes, plus a truncated JPEG, an empty file, text named .jpg, a .txt."""
    root = tmp_path / "messy"
    root.mkdir()
    expected = {}
    for name, (image, rgb) in _mode_images().items():
        image.save(root / name)
        expected[name] = rgb
    noise = rng_images(5, (64, 64, 3))
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=95)
    (root / "bad").mkdir()
    (root / "bad" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "bad" / "empty.PNG").write_bytes(b"")
    (root / "bad" / "notes.jpg").write_text("this is not a picture\n")
    (root / "readme.txt").write_text("ignored")
    (root / ".hidden.png").write_bytes(b"")
    return root, expected


def test_modes_decode_to_expected_rgb(messy_folder):
    root, expected = messy_folder
    assert Image.open(root / "sixteen.png").mode.startswith("I")  # the file really is 16-bit
    assert Image.open(root / "cmyk.tif").mode == "CMYK"
    for name, rgb in expected.items():
        np.testing.assert_array_equal(pixels(open_image(root / name)), rgb, err_msg=name)


def test_wide_modes_scale_by_value_range():
    big_endian = Image.frombytes("I;16B", (3, 1), np.array([0, 1000, 65535], ">u2").tobytes())
    np.testing.assert_array_equal(pixels(to_rgb(big_endian))[..., 0], [[0, 4, 255]])
    as_int = Image.fromarray(np.array([[0, 1000, 65535]], np.int32), "I")
    np.testing.assert_array_equal(pixels(to_rgb(as_int))[..., 0], [[0, 4, 255]])
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_array_equal(pixels(to_rgb(unit_float))[..., 0], [[0, 128, 255]])
    wide_float = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], np.float32), "F")
    np.testing.assert_array_equal(pixels(to_rgb(wide_float))[..., 0], [[0, 128, 255]])


def test_bad_images_raise_with_reason(messy_folder):
    root, expected = messy_folder
    ds = load(f"images:{root}")
    names = ds.item_names
    assert names == sorted(["bad/empty.PNG", "bad/notes.jpg", "bad/truncated.jpg", *expected])
    assert ds.classes == [] and (ds.labels == -1).all()
    reasons = {}
    for i, name in enumerate(names):
        if name.startswith("bad/"):
            with pytest.raises(BadImageError) as info:
                ds[i]
            assert info.value.path == str(root / name)
            assert isinstance(info.value, NolabelError)
            reasons[name] = info.value.reason
        else:
            np.testing.assert_array_equal(pixels(ds[i][0]), expected[name], err_msg=name)
    assert "truncated" in reasons["bad/truncated.jpg"]
    assert "empty" in reasons["bad/empty.PNG"]
    assert "not an image" in reasons["bad/notes.jpg"]


def test_truncated_images_stay_detected(monkeypatch, messy_folder):
    root, _ = messy_folder
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(NolabelError, match="LOAD_TRUNCATED_IMAGES"):
        open_image(root / "gray.png")


def test_exif_orientation_is_applied(tmp_path):
    stored = rng_images(6, (2, 3, 3))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    np.testing.assert_array_equal(pixels(open_image(tmp_path / "rotated.png")), np.rot90(stored, k=-1))


# --- folder datasets -------------------------------------------------------------------------------

def test_class_folders(tmp_path):
    for cls, value in [("zebra", 10), ("ant", 20), ("cat", 30)]:
        save_png(tmp_path / cls / "b.png", np.full((4, 5, 3), value, np.uint8))
        save_png(tmp_path / cls / "nested" / "a.png", np.full((4, 5, 3), value + 1, np.uint8))
    (tmp_path / ".ipynb_checkpoints").mkdir()
    save_png(tmp_path / "loose.png", np.zeros((2, 2, 3), np.uint8))
    ds = load(f"folder:{tmp_path}")
    assert ds.classes == ["ant", "cat", "zebra"]
    assert ds.item_names == ["ant/b.png", "ant/nested/a.png", "cat/b.png", "cat/nested/a.png",
                             "zebra/b.png", "zebra/nested/a.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds[5][0].getpixel((0, 0)) == (11, 11, 11) and ds[5][1] == 2
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(NolabelError, match="empty_class holds no images"):
        load(f"folder:{tmp_path}")


def test_folder_without_class_folders_points_to_images_spec(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(NolabelError, match="no class subfolders; for a folder of unlabelled images use images:"):
        load(f"folder:{tmp_path}")
    assert load(f"images:{tmp_path}").item_names == ["a.png"]


# --- ImageNet, subsets, ObjectNet ------------------------------------------------------------------

def _tiny_jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path, format="JPEG")


def test_imagenet_folders(tmp_path):
    wnids = ["n03000134", "n01440764", "n02102040"]
    for i, wnid in enumerate(wnids):
        _tiny_jpeg(tmp_path / "train" / wnid / f"{wnid}_{i}.JPEG", 40 * i)
        _tiny_jpeg(tmp_path / "val" / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", 40 * i)
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn02102040 English springer, English springer spaniel\n")
    ds = load(f"imagenet:{tmp_path}")
    assert ds.classes == ["tench, Tinca tinca", "English springer, English springer spaniel", "n03000134"]
    assert ds.item_names == ["train/n01440764/n01440764_1.JPEG", "train/n02102040/n02102040_2.JPEG",
                             "train/n03000134/n03000134_0.JPEG"]
    assert ds.labels.tolist() == [0, 1, 2]
    val = load(f"imagenet:{tmp_path}:val")
    assert val.labels.tolist() == [0, 1, 2] and val.item_names[0].startswith("val/n01440764/")
    assert abs(pixels(val[1][0]).astype(int).mean() - 80) < 3  # JPEG of grey 80, class n02102040


def test_imagenet_flat_val_is_explained(tmp_path):
    _tiny_jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG", 0)
    with pytest.raises(NolabelError, match="loose images: sort them into <wnid>/ folders"):
        load(f"imagenet:{tmp_path}:val")
    with pytest.raises(NolabelError, match="no train/ folder"):
        load(f"imagenet:{tmp_path}")


def test_imagenet50_subset(tmp_path):
    subset_file = Path(__file__).parents[1] / "src/nolabel/data/imagenet_subsets/imagenet_50.txt"
    listed = dict(line.split(" ", 1) for line in subset_file.read_text().splitlines() if line.strip())
    assert len(listed) == 50
    wnids = sorted(listed)
    for i, wnid in enumerate(reversed(wnids)):  # written in reverse: order must come from sorting
        save_png(tmp_path / "val" / wnid / "x.png", np.full((2, 2, 3), i, np.uint8))
    save_png(tmp_path / "val" / "n00000001" / "x.png", np.zeros((2, 2, 3), np.uint8))  # not in the subset
    ds = load(f"imagenet50:{tmp_path}:val")
    assert len(ds) == 50 and ds.labels.tolist() == list(range(50))
    assert ds.classes == [listed[w] for w in wnids]
    assert [n.split("/")[1] for n in ds.item_names] == wnids
    (tmp_path / "val" / wnids[3] / "x.png").unlink()
    (tmp_path / "val" / wnids[3]).rmdir()
    with pytest.raises(NolabelError, match=f"lacks 1 of the 50 class folders of imagenet50: {wnids[3]}$"):
        load(f"imagenet50:{tmp_path}:val")


def test_objectnet(tmp_path):
    folders = {"alarm_clock": "Alarm clock", "banana": "Banana", "squeegee": "Squeegee"}
    pictures = {"alarm_clock": [rng_images(50, (4, 6, 3))], "banana": [rng_images(51, (5, 3, 3)), rng_images(52, (3, 3, 3))],
                "squeegee": [rng_images(53, (2, 2, 3))]}
    # ObjectNet's ImageNet list is in ILSVRC2012-id order; sorted-wnid index k has 2012 id perm[k]
    perm = np.random.default_rng(0).permutation(1000)
    names_2012 = [f"class {j}" for j in range(1000)]
    names_2012[17], names_2012[400], names_2012[999] = "analog clock", "digital clock", "banana"
    write_objectnet(tmp_path, folders, pictures, {"Alarm clock": "analog clock; digital clock", "Banana": "banana"},
                    perm.tolist(), names_2012)
    ds = load(f"objectnet:{tmp_path}")
    assert ds.classes == ["Alarm clock", "Banana", "Squeegee"] and ds.labels.tolist() == [0, 1, 1, 2]
    assert ds.item_names[1] == "images/banana/0000.png"
    np.testing.assert_array_equal(pixels(ds[1][0]), pictures["banana"][0])  # the red frame is gone
    sorted_index_of = {int(j): k for k, j in enumerate(perm)}
    assert ds.imagenet_class_indices == {0: sorted([sorted_index_of[17], sorted_index_of[400]]),
                                         1: [sorted_index_of[999]]}
    (tmp_path / "mappings" / "pytorch_to_imagenet_2012_id.json").unlink()
    with pytest.raises(NolabelError, match="pytorch_to_imagenet_2012_id.json not found in .*mappings"):
        load(f"objectnet:{tmp_path}")


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_datasets_prints_table_and_summary(capsys):
    from nolabel.cli import COMMANDS
    from nolabel.cli import datasets as command

    assert COMMANDS["datasets"][0] == "datasets"
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args([])) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["SPEC", "HERE", "WHERE", "DESCRIPTION"]
    for pattern in ("fashion-mnist[:PATH][:train|test|all]", "cifar100-20:PATH[:train|test|all]",
                    "stl10:PATH[:train|test|unlabeled|train+unlabeled]", "objectnet:PATH", "images:PATH"):
        assert pattern in table
    assert command.run(parser.parse_args(["digits"])) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("digits: 1797 images, 10 classes, array uint8 (1797, 8, 8)")
    assert "       178  0" in summary  # 178 zeros in load_digits


def test_image_min_size_decodes_a_jpeg_at_reduced_scale_but_never_below_it(tmp_path):
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(folder / "big.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(folder / "big.png")
    ds = load(f"folder:{tmp_path / 'imgs'}")
    jpeg, png = ds.item_names.index("a/big.jpg"), ds.item_names.index("a/big.png")
    assert ds.image(jpeg).size == (500, 375) == ds[jpeg][0].size
    assert ds.image(jpeg, min_size=128).size == (250, 188)  # 1/2 scale: both sides still >= 128
    assert ds.image(jpeg, min_size=40).size == (63, 47)  # 1/8 scale
    assert ds.image(jpeg, min_size=256).size == (500, 375)  # 1/2 would be too small
    assert ds.image(png, min_size=40).size == (500, 375)  # only JPEG decoders can skip work
    # the reduced decode is a faithful small version of the image
    full = np.asarray(ds.image(jpeg).resize((63, 47), Image.Resampling.BILINEAR), dtype=float)
    small = np.asarray(ds.image(jpeg, min_size=40), dtype=float)
    assert np.abs(full - small).mean() < 12


# --- names read from data files stay inside the dataset root ----------------------------------------

def _objectnet_with_folders(root: Path, folders: dict[str, str]) -> None:
    """An ObjectNet layout whose folder_to_objectnet_label.json names `folders` (images written for
    none of them: the caller decides where they are)."""
    write_objectnet(root, folders, {}, {}, list(range(1000)), [f"class {j}" for j in range(1000)])
    (root / "images").mkdir(exist_ok=True)
    save_png(root / "images" / "banana" / "0000.png", np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("name, outside", [
    ("../outside", "ds/outside"),  # out of images/, where the names are joined
    ("../../outside", "outside"),  # out of the dataset root itself
])
def test_objectnet_folder_names_climbing_out_are_refused(tmp_path, name, outside):
    save_png(tmp_path / outside / "secret.png", np.full((4, 4, 3), 7, np.uint8))
    _objectnet_with_folders(tmp_path / "ds", {"banana": "Banana", name: "Escape"})
    with pytest.raises(NolabelError, match=r"folder_to_objectnet_label\.json: name '\.\./.*outside' leads "
                                           r"outside .*images"):
        load(f"objectnet:{tmp_path / 'ds'}")


def test_objectnet_absolute_folder_name_is_refused(tmp_path):
    outside = tmp_path / "outside"
    save_png(outside / "secret.png", np.full((4, 4, 3), 7, np.uint8))
    _objectnet_with_folders(tmp_path / "ds", {"banana": "Banana", str(outside): "Escape"})
    with pytest.raises(NolabelError, match=r"mappings/folder_to_objectnet_label\.json: name '/.*outside' "
                                           r"leads outside"):
        load(f"objectnet:{tmp_path / 'ds'}")


def test_objectnet_folder_name_through_a_symlink_out_of_the_root_is_refused(tmp_path):
    # a link below images/ that a *file* names is not followed out of the root (see
    # nolabel.data.dataset.path_inside); a linked dataset folder itself is fine (next test)
    save_png(tmp_path / "outside" / "secret.png", np.full((4, 4, 3), 7, np.uint8))
    _objectnet_with_folders(tmp_path / "ds", {"banana": "Banana", "linked": "Linked"})
    (tmp_path / "ds" / "images" / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(NolabelError, match=r"folder_to_objectnet_label\.json: name 'linked' leads outside"):
        load(f"objectnet:{tmp_path / 'ds'}")


def test_objectnet_nested_folder_name_and_linked_dataset_folders_load(tmp_path):
    _objectnet_with_folders(tmp_path / "real", {"banana": "Banana", "kitchen/kettle": "Kettle"})
    save_png(tmp_path / "real" / "images" / "kitchen" / "kettle" / "0000.png", np.full((4, 4, 3), 9, np.uint8))
    ds = load(f"objectnet:{tmp_path / 'real'}")
    assert ds.classes == ["Banana", "Kettle"] and ds.labels.tolist() == [0, 1]
    assert ds.item_names == ["images/banana/0000.png", "images/kitchen/kettle/0000.png"]
    # the user may link the whole dataset folder, or its images/ folder, from elsewhere
    (tmp_path / "linked_root").symlink_to(tmp_path / "real", target_is_directory=True)
    assert load(f"objectnet:{tmp_path / 'linked_root'}").item_names == ds.item_names
    (tmp_path / "other" / "mappings").mkdir(parents=True)
    for f in (tmp_path / "real" / "mappings").iterdir():
        (tmp_path / "other" / "mappings" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "other" / "images").symlink_to(tmp_path / "real" / "images", target_is_directory=True)
    assert load(f"objectnet:{tmp_path / 'other'}").item_names == ds.item_names


def test_listed_class_folder_symlinked_by_the_user_is_followed(tmp_path):
    # folders found by listing a directory (not named by a file) are followed as the user placed them
    save_png(tmp_path / "elsewhere" / "cats" / "a.png", np.zeros((2, 2, 3), np.uint8))
    save_png(tmp_path / "ds" / "dogs" / "b.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "ds" / "cats").symlink_to(tmp_path / "elsewhere" / "cats", target_is_directory=True)
    assert load(f"folder:{tmp_path / 'ds'}").item_names == ["cats/a.png", "dogs/b.png"]


def test_file_image_dataset_refuses_paths_that_climb_out_with_dotdot(tmp_path):
    from nolabel.data import FileImageDataset

    root = tmp_path / "ds"
    with pytest.raises(ValueError, match=r"climbs out of .*ds"):
        FileImageDataset("x", root, [f"{root}/a/../../outside/x.png"], np.zeros(1, np.int64), ["a"])
    ok = FileImageDataset("x", root, [f"{root}/a/x..y.png", f"{root}/..a/b.png"], np.zeros(2, np.int64), ["a"])
    assert ok.item_names == ["a/x..y.png", "..a/b.png"]


def test_path_inside_refuses_escapes_and_names_the_source(tmp_path):
    from nolabel.data.dataset import path_inside

    (tmp_path / "root" / "a" / "b").mkdir(parents=True)
    root = tmp_path / "root"
    assert path_inside(root, "a/b", "list.txt") == root / "a" / "b"
    assert path_inside(root, "a/../a/b", "list.txt") == root / "a" / "b"  # harmless '..' is normalised
    for name in ("..", "../x", "a/../../x", str(tmp_path), "", "."):
        with pytest.raises(NolabelError, match=f"list.txt: name {name!r} .*{root}"):
            path_inside(root, name, "list.txt")


def test_imagenet_subset_wnids_are_joined_inside_the_split_folder(tmp_path, monkeypatch):
    from nolabel.data import imagenet

    save_png(tmp_path / "outside" / "x.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "ds" / "train").mkdir(parents=True)
    monkeypatch.setattr(imagenet, "subset_classes", lambda name: {"../../outside": "escape"})
    with pytest.raises(NolabelError, match=r"imagenet_50\.txt: name '\.\./\.\./outside' leads outside .*train"):
        load(f"imagenet50:{tmp_path / 'ds'}")
    # a per-class link is a link below the root, named by the list: refused with a hint
    (tmp_path / "ds" / "train" / "n01").symlink_to(tmp_path / "outside", target_is_directory=True)
    monkeypatch.setattr(imagenet, "subset_classes", lambda name: {"n01": "linked"})
    with pytest.raises(NolabelError, match="through a symbolic link below .*link the whole folder instead"):
        load(f"imagenet50:{tmp_path / 'ds'}")
