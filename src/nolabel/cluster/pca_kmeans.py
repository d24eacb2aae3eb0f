"""The features -> PCA -> k-means -> metrics stage (Zheltonozhskii et al. 2020), over feature stores.

PCA and k-means are fitted on the first store ("train"); every store is then projected and assigned
to the nearest centroid. Where labels exist each store is scored twice, and both are kept:

- `fit_on="train"`: the cluster->class mapping is fitted on the train store's assignments and
  applied to this store - the fully unsupervised protocol of paper 1;
- `fit_on="eval"`: the mapping is fitted on this store itself - SCAN's protocol.

ObjectNet stores are scored through the ObjectNet->ImageNet class correspondence: a sample counts
as correct when the ImageNet class its cluster maps to (fitted on train) is one of the ImageNet
classes of its ObjectNet class; samples of classes without an ImageNet counterpart are not scored.

Output folder: pca.npz, centroids.npy, assignments.csv (row, source, cluster, distance, label),
metrics.json, run.json (settings, versions, timings) and, last, record.json (`nolabel.record`): the
fingerprints of the feature stores and the settings, so a caller can tell a finished, matching
stage from one to redo.
"""
from __future__ import annotations

import csv
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__, metrics, record
from ..config import EvaluateConfig, KMeansConfig, PCAConfig
from ..errors import NolabelError
from ..io import atomic_path, read_json, save_npy, write_json
from ..store import FeatureStore, source_names
from ._faiss import import_faiss
from .kmeans import KMeans
from .pca import PCA

RUN_JSON = "run.json"
STAGE = "cluster"


def stage_settings(stores: Sequence[FeatureStore], pca: PCAConfig, kmeans: KMeansConfig,
                   evaluate: EvaluateConfig) -> dict[str, Any]:
    """What determines this stage's output (its record's inputs): the feature stores it reads, by
    fingerprint, and its parameters."""
    return {
        "inputs": [{"dataset": s.manifest.get("dataset"), "model": s.manifest.get("model"),
                    "features": s.fingerprint, "n": s.n, "dim": s.dim} for s in stores],
        "pca": asdict(pca),
        "kmeans": asdict(kmeans),
        "evaluate": asdict(evaluate),
    }


def cluster_stores(
    train: FeatureStore,
    evals: Sequence[FeatureStore] = (),
    out: str | os.PathLike = "clusters",
    *,
    pca: PCAConfig = PCAConfig(),
    kmeans: KMeansConfig = KMeansConfig(),
    evaluate: EvaluateConfig = EvaluateConfig(),
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit PCA + k-means on `train`, assign `train` and every store in `evals`, score, write `out`.

    Returns the metrics dict written to metrics.json: {source name: {...}}. An output already
    finished in `out` from the same stores and settings is returned as it is; one made from others
    is replaced only with `force`.
    """
    out = Path(out)
    stores = [train, *evals]
    names = source_names(stores)
    for s in evals:
        if s.dim != train.dim:
            raise NolabelError(f"{s.path}: features have {s.dim} dimensions, the train store {train.dim}")
    if kmeans.n_clusters > train.n:
        raise NolabelError(f"k = {kmeans.n_clusters} clusters but the train store has only {train.n} rows")
    settings = stage_settings(stores, pca, kmeans, evaluate)
    if record.begin(out, STAGE, settings, force=force, what="a clustering") is record.DONE:
        return read_json(out / "metrics.json")
    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    projector = None
    if pca.enabled:
        projector = PCA(n_components=pca.n_components, whiten=pca.whiten, l2_normalize=pca.l2_normalize)
        train_x = projector.fit_transform(train.features)
        projector.save(out / "pca.npz")
    else:
        (out / "pca.npz").unlink(missing_ok=True)  # from an earlier clustering of this folder with PCA
        train_x = np.asarray(train.features, dtype=np.float32)
    timings["pca_fit"] = time.perf_counter() - t

    t = time.perf_counter()
    model = KMeans(n_clusters=kmeans.n_clusters, n_init=kmeans.n_init, max_iter=kmeans.max_iter,
                   spherical=kmeans.spherical, seed=kmeans.random_state, verbose=progress)
    model.fit(train_x)
    save_npy(out / "centroids.npy", model.cluster_centers_.astype(np.float32))
    timings["kmeans_fit"] = time.perf_counter() - t

    t = time.perf_counter()
    assignments: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, store in zip(names, stores):
        x = train_x if store is train else (
            projector.transform(store.features) if projector else np.asarray(store.features, np.float32))
        assignments[name] = model.predict(x, return_distance=True)
    timings["assign"] = time.perf_counter() - t
    _write_assignments(out, names, stores, assignments)

    t = time.perf_counter()
    results = _score(names, stores, assignments, evaluate)
    timings["metrics"] = time.perf_counter() - t
    results["_clustering"] = {
        "n_clusters": kmeans.n_clusters, "inertia": float(model.inertia_), "n_iter": int(model.n_iter_),
        "pca_components": int(train_x.shape[1]),
        "explained_variance": float(projector.explained_variance_ratio_.sum()) if projector else None,
    }
    write_json(out / "metrics.json", results)
    write_json(out / RUN_JSON, {
        "settings": settings,
        "sources": dict(zip(names, (str(s.path) for s in stores))),
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "versions": _versions(),
    })
    record.finish(out, STAGE, settings)
    return results


def format_metrics(results: dict[str, Any]) -> str:
    """A table of metrics.json: one line per (source, protocol)."""
    header = f"{'source':<20} {'protocol':<13} {'n':>8} {'ACC':>7} {'NMI':>7} {'ARI':>7} {'AMI':>7}"
    lines = [header, "-" * len(header)]
    for name, entry in results.items():
        if name.startswith("_"):
            continue
        for protocol in ("fit_on_eval", "fit_on_train"):
            m = entry.get(protocol)
            if m:
                lines.append(f"{name:<20} {protocol:<13} {entry['n_labelled']:>8} {m['acc']:7.4f} "
                             f"{m['nmi']:7.4f} {m['ari']:7.4f} {m['ami']:7.4f}")
        if "objectnet" in entry:
            o = entry["objectnet"]
            lines.append(f"{name:<20} {'objectnet':<13} {o['n_scored']:>8} {o['accuracy_overlapping_classes']:7.4f}")
        if not any(p in entry for p in ("fit_on_eval", "fit_on_train", "objectnet")):
            lines.append(f"{name:<20} {'(no labels)':<13} {entry['n']:>8}")
    c = results.get("_clustering", {})
    if c:
        lines.append(f"n_clusters={c['n_clusters']}  PCA dims={c['pca_components']}  inertia={c['inertia']:.6g}  iterations={c['n_iter']}")
    return "\n".join(lines)


def _write_assignments(out: Path, names, stores, assignments) -> None:
    with atomic_path(out / "assignments.csv") as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", "source", "cluster", "distance", "label"])
            for name, store in zip(names, stores):
                clusters, distances = assignments[name]
                labels = store.labels
                w.writerows(zip(range(len(clusters)), [name] * len(clusters), clusters.tolist(),
                                np.round(distances.astype(np.float64), 6).tolist(), labels.tolist()))


def _score(names, stores, assignments, evaluate: EvaluateConfig) -> dict[str, Any]:
    train_pred, _ = assignments["train"]
    train_labels = stores[0].labels
    train_known = train_labels >= 0
    results: dict[str, Any] = {}
    for name, store in zip(names, stores):
        pred, _ = assignments[name]
        labels = store.labels
        known = labels >= 0
        entry: dict[str, Any] = {"n": int(len(pred)), "n_labelled": int(known.sum()),
                                 "cluster_sizes": np.bincount(pred, minlength=int(pred.max()) + 1).tolist()}
        if known.any():
            if str(store.manifest.get("dataset", "")).startswith("objectnet"):
                entry["objectnet"] = _score_objectnet(store, pred, train_pred[train_known],
                                                      train_labels[train_known], evaluate)
            else:
                kwargs = dict(method=evaluate.mapping, average_method=evaluate.average_method)
                entry["fit_on_eval"] = metrics.evaluate(pred[known], labels[known], **kwargs)
                if name != "train" and train_known.any():
                    entry["fit_on_train"] = metrics.evaluate(
                        pred[known], labels[known], fit=(train_pred[train_known], train_labels[train_known]),
                        **kwargs)
        results[name] = entry
    return results


def _score_objectnet(store: FeatureStore, pred, train_pred, train_labels, evaluate) -> dict[str, Any]:
    from ..data import load

    dataset = load(store.manifest["dataset"])
    correspondence = dataset.imagenet_class_indices  # objectnet label -> ImageNet class indices
    mapping = metrics.map_clusters(metrics.contingency(train_pred, train_labels), evaluate.mapping)
    labels = store.labels
    scored = np.array([bool(correspondence.get(int(y))) for y in labels])
    if not scored.any():
        raise NolabelError(f"{store.path}: no ObjectNet class here has an ImageNet counterpart")
    predicted, seen = mapping.lookup(pred)  # ImageNet class per sample; unseen clusters count wrong
    correct = np.array([s and int(p) in correspondence.get(int(y), ()) for p, s, y in zip(predicted, seen, labels)])
    return {
        "accuracy_overlapping_classes": float(correct[scored].mean()),
        "n_scored": int(scored.sum()),
        "n_classes_scored": int(len({int(y) for y in labels[scored]})),
        "protocol": f"mapping fitted on train ({evaluate.mapping}), carried to ObjectNet classes",
    }


def _versions() -> dict[str, str]:
    import scipy
    import sklearn
    import torch

    return {"nolabel": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "faiss": import_faiss().__version__,
            "torch": torch.__version__}
