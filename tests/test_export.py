"""`nolabel export`: a run's clusters as folders of links, copies or PNGs, never touching the originals."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nolabel.cli import main
from nolabel.clustering import open_run_clustering
from nolabel.data import load
from nolabel.errors import NolabelError
from nolabel.export import CLUSTERS_CSV, export
from photo_fixtures import COLOURS, make_read_only, make_run, make_writable, snapshot, write_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A read-only folder of hostile names with class folders, and a finished run over it."""
    root = tmp_path_factory.mktemp("export") / "my photos"
    classes = write_photos(root)
    run_dir = make_run(root.parent / "run", f"folder:{root}")
    make_read_only(root)
    yield root, classes, run_dir
    make_writable(root)


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / CLUSTERS_CSV, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_links_every_image_into_its_clusters_folder(photos, tmp_path):
    root, classes, run_dir = photos
    before = snapshot(root)
    out = export(run_dir, tmp_path / "sorted", progress=False)
    assert snapshot(root) == before  # the originals, their folder and their permissions are untouched

    clustering = open_run_clustering(run_dir)
    assigned = clustering.assignments["train"]
    mapped = clustering.mapped_classes()
    assert sorted(mapped.values()) == sorted(COLOURS)  # three separable colours: one cluster per class
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(f"cluster_{c:02d}_{mapped[c]}" for c in range(3))  # unicode and a leading dash kept
    rows = _rows(out)
    assert len(rows) == len(classes) == len(assigned.items)
    for row, item, cluster in zip(rows, assigned.items, assigned.cluster):
        original = root / item
        assert row["path"] == str(original) and int(row["cluster"]) == cluster
        assert row["class"] == classes[item] == mapped[cluster]
        exported = out / row["file"]
        assert exported.is_symlink() and os.readlink(exported) == str(original)
        assert exported.read_bytes() == original.read_bytes()
        assert row["file"].startswith(f"cluster_{cluster:02d}_")
    # the same name in two folders, and two names differing only in case, get distinct files
    blue = sorted(p.name for p in (out / f"cluster_{_cluster_of(mapped, '-blue'):02d}_-blue").iterdir())
    assert len(blue) == 7 and {"IMG 1.PNG", "img 1-2.png", "img 1-3.png", "-rf leading dash.png"} <= set(blue)
    assert not list(tmp_path.glob(".sorted.*"))  # no partial folder left beside it


def _cluster_of(mapped: dict[int, str], name: str) -> int:
    return next(c for c, n in mapped.items() if n == name)


def test_copy_from_the_command_line_gives_plain_writable_files(photos, tmp_path):
    root, _, run_dir = photos
    assert main(["export", str(run_dir), "--to", str(tmp_path / "copies"), "--copy", "--quiet"]) == 0
    for row in _rows(tmp_path / "copies"):
        copied, original = tmp_path / "copies" / row["file"], Path(row["path"])
        assert not copied.is_symlink() and copied.read_bytes() == original.read_bytes()
        assert copied.stat().st_mtime_ns == original.stat().st_mtime_ns
        assert os.access(copied, os.W_OK) and copied.stat().st_mode & 0o200  # a read-only original, a writable copy


def test_refuses_a_non_empty_target_and_replaces_only_an_earlier_export(photos, tmp_path, capsys):
    root, _, run_dir = photos
    before = snapshot(root)
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    for force in (False, True):  # a folder of other files is never replaced
        with pytest.raises(NolabelError, match="not an earlier nolabel export"):
            export(run_dir, others, force=force, progress=False)
    assert (others / "notes.txt").read_text() == "mine"
    (tmp_path / "a file").write_text("x")
    with pytest.raises(NolabelError, match="is a file"):
        export(run_dir, tmp_path / "a file", progress=False)
    with pytest.raises(NolabelError, match="inside the dataset folder"):
        export(run_dir, root / "sorted", progress=False)

    empty = tmp_path / "empty"
    empty.mkdir()
    export(run_dir, empty, progress=False)  # an empty folder is fine
    (empty / "stale.txt").write_text("from an earlier export")
    assert main(["export", str(run_dir), "--to", str(empty), "--quiet"]) == 2
    assert "earlier export" in capsys.readouterr().err
    export(run_dir, empty, mode="copy", force=True, progress=False)
    assert not (empty / "stale.txt").exists() and len(_rows(empty)) == 21
    assert snapshot(root) == before  # replacing the links removed the links, not what they pointed to
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unlabelled_run_gets_plain_cluster_folders(photos, tmp_path):
    root, _, _ = photos
    run_dir = make_run(tmp_path / "run", f"images:{root}")
    out = export(run_dir, tmp_path / "sorted", progress=False)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cluster_00", "cluster_01", "cluster_02"]
    rows = _rows(out)
    assert list(rows[0]) == ["path", "cluster", "confidence", "typicality", "file"]
    assert all((out / r["file"]).resolve() == Path(r["path"]).resolve() for r in rows)


def test_array_dataset_images_are_written_as_png(tmp_path):
    run_dir = make_run(tmp_path / "run", "digits", image_size=8, n_clusters=10)
    out = export(run_dir, tmp_path / "sorted", mode="copy", progress=False)
    digits = load("digits")
    rows = _rows(out)
    assert len(rows) == len(digits) and all(r["file"].endswith(".png") for r in rows)
    mapped = open_run_clustering(run_dir).mapped_classes()
    for r in rows[::97]:
        i = digits.item_names.index(r["path"])  # the item's name, for images without a file
        np.testing.assert_array_equal(np.asarray(Image.open(out / r["file"])), digits.images[i])
        assert r["file"].startswith(f"cluster_{int(r['cluster']):02d}_{mapped[int(r['cluster'])]}/")


def test_bad_arguments_are_clear_errors(photos, tmp_path):
    _, _, run_dir = photos
    with pytest.raises(NolabelError, match="mode must be one of"):
        export(run_dir, tmp_path / "x", mode="move")
    with pytest.raises(NolabelError, match="no source 'test'"):
        export(run_dir, tmp_path / "x", source="test")
    with pytest.raises(NolabelError, match="no clustering 'scan'"):
        export(run_dir, tmp_path / "x", clustering="scan")
    assert not (tmp_path / "x").exists()
