"""Folders of small photos with hostile file names, and finished runs over them: the fixtures of the
tests of export, predict and similar.

The photos are three colours (one per class folder) with a little noise, so any backbone clusters
them into the three classes; the names hold spaces, unicode, a leading dash, a comma and quotes,
two names differing only in case, and the same file name in two folders of one class.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from nolabel.config import load_config
from nolabel.pipeline import run

COLOURS = {"red things": (200, 30, 30), "grün": (30, 190, 40), "-blue": (40, 50, 210)}
NAMES = ["img 1.png", "IMG 1.PNG", "ünïcode ✓.png", "-rf leading dash.png", 'comma, "quoted".png', "plain.jpg"]


def write_photos(root: Path, seed: int = 0, names: list[str] = NAMES) -> dict[str, str]:
    """root/<class>/<name> and root/<class>/sub dir/img 1.png for every class of COLOURS; returns
    {path relative to root: class}."""
    rng = np.random.default_rng(seed)
    written = {}
    for name_of_class, colour in COLOURS.items():
        for name in [*names, "sub dir/img 1.png"]:
            pixels = np.clip(np.array(colour) + rng.normal(0, 12, (16, 16, 3)), 0, 255).astype(np.uint8)
            path = root / name_of_class / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            written[path.relative_to(root).as_posix()] = name_of_class
    return written


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under root: (size, modification time, mode) - to check nothing changed."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            found[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return found


def make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o555)
    os.chmod(root, 0o555)


def make_writable(root: Path) -> None:
    """Undo make_read_only, so pytest can remove its temporary folders."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def make_run(out: Path, spec: str, *, model: str = "pixels", image_size: int = 8, n_clusters: int = 3,
             settings: tuple[str, ...] = ()) -> Path:
    """A finished `nolabel run` of `spec` into `out`: features, PCA-8 + k-means, no baseline, no report."""
    overrides = ["name=photos", f"data.train={spec}", f"model.name={model}", f"extract.image_size={image_size}",
                 "extract.batch_size=8", "pca.n_components=8", f"kmeans.n_clusters={n_clusters}",
                 "baseline.enabled=false", "report=false", *settings]
    run(load_config(None, overrides), out, progress=False, log=lambda message: None)
    return out
