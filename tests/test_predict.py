"""`nolabel predict`: new images through exactly the run's extraction, then the run's clustering."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from nolabel.cli import main
from nolabel.clustering import open_run_clustering
from nolabel.errors import NolabelError
from nolabel.models import create, save_checkpoint
from nolabel.predict import predict
from photo_fixtures import make_read_only, make_run, make_writable, write_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A read-only folder of hostile names with class folders, a run over it, and a folder of images the
    run never saw (other noise, other names, one unreadable file)."""
    base = tmp_path_factory.mktemp("predict")
    root, new = base / "my photos", base / "new photos"
    write_photos(root)
    write_photos(new, seed=7, names=["x y.png", "ñew.png"])
    (new / "broken.png").write_bytes(b"not an image")
    run_dir = make_run(base / "run", f"folder:{root}")
    make_read_only(root)
    yield root, new, run_dir
    make_writable(root)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _agreement(run_dir: Path, data: str, **options) -> float:
    assigned = open_run_clustering(run_dir).assignments["train"]
    result = predict(run_dir, data, progress=False, **options)
    assert result.items == assigned.items
    np.testing.assert_allclose(result.confidence, assigned.confidence, atol=1e-5)
    return float((result.cluster == assigned.cluster).mean())


def test_predicting_the_runs_own_images_reproduces_its_assignments(photos, tmp_path):
    root, _, run_dir = photos
    assert _agreement(run_dir, f"folder:{root}") == 1.0
    # through the command line, from a moved run folder (the feature store is found relative to it)
    moved = tmp_path / "moved run"
    shutil.copytree(run_dir, moved)
    shutil.rmtree(run_dir / "features")
    try:
        assert main(["predict", str(moved), "--data", f"folder:{root}", "--out", str(tmp_path / "own.csv"),
                     "--quiet"]) == 0
    finally:
        shutil.copytree(moved / "features", run_dir / "features")
    rows = _read_csv(tmp_path / "own.csv")
    assigned = open_run_clustering(moved).assignments["train"]
    assert [r["path"] for r in rows] == [str(root / item) for item in assigned.items]
    assert [int(r["cluster"]) for r in rows] == assigned.cluster.tolist()
    assert [r["class"] for r in rows] == [item.split("/")[0] for item in assigned.items]


def test_pretrained_backbone_in_bf16_reproduces_the_assignments(photos, tmp_path):
    # the default extraction (EfficientNet-Lite0, bf16, the fastest backend): same batches, same numbers
    root, _, _ = photos
    run_dir = make_run(tmp_path / "run", f"folder:{root}", model="efficientnet_lite0", image_size=32)
    assert _agreement(run_dir, f"folder:{root}") >= 0.995


def test_images_the_run_never_saw(photos, tmp_path, capsys):
    _, new, run_dir = photos
    out = tmp_path / "new.csv"
    assert main(["predict", str(run_dir), "--data", f"images:{new}", "--out", str(out), "--quiet"]) == 0
    assert "broken.png" in capsys.readouterr().err  # unreadable: listed, left out
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "cluster", "confidence", "class"]
    assert len(rows) == 3 * 3
    mapped = open_run_clustering(run_dir).mapped_classes()
    for row in rows:
        colour = Path(row["path"]).relative_to(new).parts[0]
        assert row["class"] == colour == mapped[int(row["cluster"])] and float(row["confidence"]) > 0.5
    # an existing output is kept unless asked
    with pytest.raises(NolabelError, match="exists"):
        predict(run_dir, f"images:{new}", out, progress=False)
    kept = tmp_path / "features"
    result = predict(run_dir, f"images:{new}", out, force=True, features=kept, progress=False)
    assert [item for item, _ in result.skipped] == ["broken.png"] and (kept / "features.npy").is_file()


def test_scan_and_self_labeling_assign_through_their_head(photos, tmp_path):
    root, new, _ = photos
    run_dir = make_run(tmp_path / "run", f"folder:{root}", settings=(
        "scan.n_heads=2", "scan.epochs=3", "scan.batch_size=8", "scan.n_neighbors=3", "scan.weak_views=1",
        "scan.strong_views=0", "selflabel.epochs=2", "selflabel.batch_size=8", "selflabel.strong_views=0"))
    assert open_run_clustering(run_dir).path.name == "selflabel"  # the run's chosen clustering: its last
    assert _agreement(run_dir, f"folder:{root}") == 1.0
    assert _agreement(run_dir, f"folder:{root}", clustering="scan") == 1.0
    assert len(predict(run_dir, f"images:{new}", progress=False).cluster) == 9


def test_whole_network_scan_assigns_through_the_network_it_trained(photos, tmp_path):
    root, new, _ = photos
    run_dir = make_run(tmp_path / "run", f"folder:{root}", model="cnn28", image_size=28, settings=(
        "scan.mode=network", "scan.n_heads=2", "scan.epochs=2", "scan.batch_size=8", "scan.n_neighbors=3"))
    assert open_run_clustering(run_dir).info["assign"]["mode"] == "network"
    assert _agreement(run_dir, f"folder:{root}") == 1.0
    # its images are read whole: an unreadable one stops it with a clear error
    with pytest.raises(NolabelError, match="broken.png"):
        predict(run_dir, f"images:{new}", progress=False)


def test_weights_are_found_checked_and_can_be_given(photos, tmp_path):
    root, _, _ = photos
    weights = tmp_path / "mine.pt"
    save_checkpoint(create("cnn28", pretrained=False), weights)
    run_dir = make_run(tmp_path / "run", f"folder:{root}", model="cnn28", image_size=28,
                       settings=(f"model.weights={weights}",))
    assert _agreement(run_dir, f"folder:{root}") == 1.0
    moved = weights.rename(tmp_path / "moved.pt")
    with pytest.raises(NolabelError, match="mine.pt"):
        predict(run_dir, f"folder:{root}", progress=False)
    assert _agreement(run_dir, f"folder:{root}", weights=moved) == 1.0
    other = tmp_path / "other.pt"
    save_checkpoint(create("cnn28", pretrained=False), other)
    with pytest.raises(NolabelError, match="sha256"):
        predict(run_dir, f"folder:{root}", weights=other, progress=False)


def test_random_weights_cannot_be_reproduced(photos, tmp_path):
    root, _, _ = photos
    run_dir = make_run(tmp_path / "run", f"folder:{root}", model="cnn28", image_size=28)
    with pytest.raises(NolabelError, match="random weights"):
        predict(run_dir, f"folder:{root}", progress=False)
