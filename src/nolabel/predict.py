"""Sort new images into a finished run's clusters.

    predictions = predict("runs/photos", "images:/new-photos", "new.csv")
    predictions.cluster, predictions.confidence       # (M,) each, one per image that could be read

The new images go through exactly what made the run's features: the backbone and its weights (found
from the feature store's record and checked by sha256), the eval transform, the backend, precision,
dtype and batch size (`extract_like`). They are then assigned by the run's chosen clustering with
`nolabel.clustering.assign`: through its PCA to the nearest k-means centroid, through a SCAN or
self-labeling head, or - for SCAN trained on the whole network - through the network it trained.
Predicting the run's own images therefore reproduces its assignments.
"""
from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .clustering import SUMMARY_JSON, Clustering, assign, open_run_clustering, recorded_folder
from .data import FileImageDataset, ImageDataset, load
from .errors import NolabelError
from .features import ExtractOptions, extract
from .io import atomic_path, read_json
from .store import SKIPPED, FeatureStore


@dataclass
class Predictions:
    """New images' clusters: one entry per image that could be read, in the dataset's order.

    items: (M,) the images' names in their dataset; paths: (M,) absolute file paths, or None for
    array datasets (Fashion-MNIST, CIFAR, ...); rows: (M,) positions in the dataset; cluster (M,)
    int64; confidence (M,) in [0, 1]; classes: (M,) the class each cluster maps to, or None when the
    run had no labels; skipped: (item, reason) of images that could not be read."""

    items: list[str]
    paths: list[str] | None
    rows: np.ndarray
    cluster: np.ndarray
    confidence: np.ndarray
    classes: list[str] | None
    skipped: list[tuple[str, str]]


def predict(run_dir: str | os.PathLike, data: str | ImageDataset, out: str | os.PathLike | None = None, *,
            clustering: str | None = None, features: str | os.PathLike | None = None,
            weights: str | os.PathLike | None = None, trust_checkpoint: bool = False, device: str = "cpu",
            force: bool = False, progress: bool = True) -> Predictions:
    """Assign the images of `data` (a dataset spec or a loaded dataset) to the clusters of `run_dir`'s
    chosen clustering (or the one `clustering` names, see `open_run_clustering`).

    out: a CSV to write - path (row for array datasets), cluster, confidence, and class (the cluster's
    mapped class) when the run had labels; an existing file is replaced only with `force`.
    features: a folder to keep the new images' features in (resumable; default: a temporary one).
    weights: the backbone's weights file, when the one the run used is no longer where it was.
    """
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not force:
        raise NolabelError(f"{out} exists; choose another file or pass --force to replace it")
    chosen = open_run_clustering(run_dir, clustering)
    dataset = load(data) if isinstance(data, str) else data
    if chosen.info["assign"].get("mode") == "network":  # the clustering reads images through its own network
        if not isinstance(data, str):
            raise NolabelError(f"{chosen.path} assigns images through the network it trained: pass a dataset spec")
        clusters, confidence = assign(chosen, data=data, device=device)
        items, skipped = dataset.item_names, []
    else:
        spaces = _run_stores(chosen)  # TURTLE reads several spaces: one extraction each
        with scratch_features_folder(features) as folder:
            stores = [extract_like(space, dataset, folder if len(spaces) == 1 else folder / f"space{i}",
                                   run_dir=run_dir, weights=weights, trust_checkpoint=trust_checkpoint,
                                   device=device, progress=progress)
                      for i, space in enumerate(spaces)]
            clusters, confidence = assign(chosen, stores)
            items, skipped = stores[0].items, _skipped(stores[0])
    position = {name: i for i, name in enumerate(dataset.item_names)}
    rows = np.array([position[item] for item in items], dtype=np.int64)
    mapped = chosen.mapped_classes()
    result = Predictions(
        items=list(items),
        paths=[os.path.abspath(dataset.paths[i]) for i in rows] if isinstance(dataset, FileImageDataset) else None,
        rows=rows, cluster=clusters, confidence=confidence,
        classes=[mapped.get(int(c), "") for c in clusters] if mapped else None, skipped=skipped)
    if out is not None:
        write_predictions(out, result)
    return result


def write_predictions(path: str | os.PathLike, predictions: Predictions) -> None:
    """The CSV `predict` writes (atomically): path or row, cluster, confidence[, class]."""
    p = predictions
    first = ("path", p.paths) if p.paths is not None else ("row", p.rows.tolist())
    columns = [first, ("cluster", p.cluster.tolist()), ("confidence", np.round(p.confidence, 6).tolist())]
    if p.classes is not None:
        columns.append(("class", p.classes))
    with atomic_path(path) as tmp:
        # surrogateescape: a file name that is not valid UTF-8 is written back as the bytes it has
        with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f)
            w.writerow([name for name, _ in columns])
            w.writerows(zip(*(values for _, values in columns)))


def extract_like(store: FeatureStore, data: str | ImageDataset, out: str | os.PathLike, *,
                 run_dir: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                 trust_checkpoint: bool = False, device: str = "cpu", progress: bool = True) -> FeatureStore:
    """Features of `data` made exactly as `store`'s were - same backbone and weights (checked by
    sha256), eval transform, backend, precision, dtype and batch size - into the store `out`.

    The weights are looked for where the store's record says they were loaded from (a published
    weight by its name, or a file; for a file recorded relative to where a run was made, also
    inside `run_dir` if it has moved since), unless `weights` names the file."""
    from .models import create

    made = store.manifest
    backbone = create(made["model"], weights=weights or _recorded_weights(made, run_dir),
                      allow_pickle=trust_checkpoint)
    wanted, loaded = made.get("weights_sha256"), getattr(backbone.load_report, "sha256", None)
    if wanted is None and any(p.numel() for p in backbone.parameters()):
        raise NolabelError(f"{store.path}: the features came from {made['model']} with random weights, which "
                           "cannot be made again; extract the run with a weights file")
    if wanted != loaded:
        raise NolabelError(f"{store.path}: the run's features came from weights with sha256 {wanted}, these have "
                           f"{loaded}; pass the run's weights file with --weights")
    recorded = made["transform"]
    if backbone.eval_transform(recorded["image_size"]).describe() != recorded:
        raise NolabelError(f"{store.path}: this nolabel builds another eval transform for {made['model']} than "
                           f"the run's ({recorded}); its features cannot be reproduced")
    options = ExtractOptions(batch_size=made["batch_size"], image_size=recorded["image_size"], device=device,
                             dtype=made["dtype"], precision=made["precision"],
                             backend=made.get("backend", "torch"),  # stores written before backends: torch
                             on_bad_image=made.get("on_bad_image", "skip"))
    return extract(data, backbone, out, options=options, progress=progress)


def _recorded_weights(manifest: dict[str, Any], run_dir: str | os.PathLike | None) -> str | None:
    """The weights file a store's features came from, or None for a published weight (found by the
    model's name) and for none. A file the run wrote (recorded under the folder it was made in) is
    looked for in `run_dir` first: the run may have been moved or copied."""
    from .models.weights import PUBLISHED_BY_NAME

    source = manifest.get("weights")
    published = re.fullmatch(r"(\S+) \((.*)\)", source or "")  # the form of a published weight's source
    if source is None or (published and published.group(1) in PUBLISHED_BY_NAME):
        return None
    if run_dir is None or not (Path(run_dir) / SUMMARY_JSON).is_file():
        return source
    inside = recorded_folder(run_dir, read_json(Path(run_dir) / SUMMARY_JSON), source)
    return str(inside) if inside.exists() else source


def _run_stores(clustering: Clustering) -> list[FeatureStore]:
    """The feature stores of the clustering's train images - the spaces new images must be put in: one,
    or one per backbone TURTLE combined."""
    stores = clustering.stores("train")
    if stores is None:
        how = clustering.info["assign"]
        recorded = how["spaces"] if how["kind"] == "turtle" else [clustering.info["sources"]["train"].get("store")]
        raise NolabelError(f"{clustering.path}: the feature store(s) of its train images are gone "
                           f"({', '.join(map(str, recorded))}); extract them again first")
    return stores


@contextlib.contextmanager
def scratch_features_folder(folder: str | os.PathLike | None) -> Iterator[Path]:
    """`folder` as given, or a temporary folder removed afterwards."""
    if folder is not None:
        yield Path(folder)
        return
    with tempfile.TemporaryDirectory(prefix="nolabel-predict-") as temporary:
        yield Path(temporary) / "features"


def _skipped(store: FeatureStore) -> list[tuple[str, str]]:
    with open(store.path / SKIPPED, newline="", encoding="utf-8") as f:
        return [(row["item"], row["reason"]) for row in csv.DictReader(f)]
