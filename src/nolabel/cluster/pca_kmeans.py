"""The features -> PCA -> k-means -> metrics stage (Zheltonozhskii et al. 2020), over feature stores.

PCA and k-means are fitted on the first store ("train"); every store is then projected and assigned
to the nearest centroid. Where labels exist each store is scored twice, and both are kept:

- `fit_on="train"`: the cluster->class mapping is fitted on the train store's assignments and
  applied to this store - the fully unsupervised protocol of paper 1;
- `fit_on="eval"`: the mapping is fitted on this store itself - SCAN's protocol.

ObjectNet stores are scored through the ObjectNet->ImageNet class correspondence: a sample counts
as correct when the ImageNet class its cluster maps to (fitted on train) is one of the ImageNet
classes of its ObjectNet class; samples of classes without an ImageNet counterpart are not scored.

The output folder is a clustering (`nolabel.clustering`: assignments.csv, metrics.json,
clustering.json) with what assigning new features needs (centroids.npy, pca.npz) and, last,
record.json (`nolabel.record`): the fingerprints of the feature stores and the settings, so a
caller can tell a finished, matching stage from one to redo.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import record
from ..clustering import Source, nearest_centroids, write_clustering
from ..config import EvaluateConfig, KMeansConfig, PCAConfig
from ..errors import NolabelError
from ..io import read_json, save_npy
from ..store import FeatureStore, source_names
from .kmeans import KMeans
from .pca import PCA

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
                   spherical=kmeans.spherical, random_state=kmeans.random_state, verbose=progress)
    model.fit(train_x)
    save_npy(out / "centroids.npy", model.cluster_centers_.astype(np.float32))
    timings["kmeans_fit"] = time.perf_counter() - t

    t = time.perf_counter()
    clusters, confidence, distance = [], [], []
    for store in stores:
        x = train_x if store is train else (
            projector.transform(store.features) if projector else np.asarray(store.features, np.float32))
        c, p, d = nearest_centroids(model.cluster_centers_, x, spherical=kmeans.spherical)
        clusters.append(c), confidence.append(p), distance.append(d)
    timings["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    results = write_clustering(
        out, method="PCA + k-means" if pca.enabled else "k-means", n_clusters=kmeans.n_clusters,
        sources=[Source.of_store(name, store) for name, store in zip(names, stores)],
        clusters=clusters, confidence=confidence, distance=distance,
        assigner={"kind": "centroids", "spherical": kmeans.spherical}, evaluate=evaluate, settings=settings,
        fitted={"inertia": float(model.inertia_), "n_iter": int(model.n_iter_),
                "pca_components": int(train_x.shape[1]),
                "explained_variance": float(projector.explained_variance_ratio_.sum()) if projector else None},
        timings=timings)
    timings["metrics"] = time.perf_counter() - t
    record.finish(out, STAGE, settings)
    return results
