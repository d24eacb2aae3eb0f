"""The clustering artifact: one kind of folder for every clusterer, one reader, one `assign`.

Whichever method made it - PCA + k-means, SCAN, self-labeling, DeepCluster's k-means, ... - a
clustering is a folder holding:

    clustering.json    the method, the number of clusters, its sources (the sets it assigned: their
                       dataset, feature store and its fingerprint), its settings, and how to assign
                       new features (`assign` below)
    assignments.csv    row, source, item, cluster, confidence, distance, typicality, label - one line
                       per image of every source; `item` names the image (its path in the dataset, or
                       split/index); `confidence` in [0, 1] (a head's probability of the cluster, or
                       k-means' margin 1 - d1/d2 between the nearest and second-nearest centroid);
                       `distance` to the centroid where there is one (else empty); `typicality` in
                       [0, 1], the image's rank within its cluster (1 the most typical member, 0 the
                       least: see `typicality`); `label` -1 where unknown
    metrics.json       per source: n, cluster sizes and, where labels exist, the label metrics under
                       both mappings (fitted on the source itself, and on the train source); labels
                       only score, they never change a clustering
    record.json        what produced it (`nolabel.record`), written last
    ...                what `assign` needs: centroids.npy (+ pca.npz), or a SCAN head (scan.pt,
                       selflabel.pt, pca.npz)

    clustering = load_clustering("runs/default/cluster")
    clustering.assignments["train"].cluster          # (N,) cluster ids of the train images
    clusters, confidence = assign(clustering, features)   # new features (M, D) -> (M,), (M,)
    clustering = open_run_clustering("runs/default")      # a run's chosen clustering
    found = outliers(clustering)                          # per cluster most / least typical, most uncertain
    x = clustered_features(clustering, "train")           # (N, d): the space it clustered in (after its PCA)
    clustering.stores("train")                            # its feature store(s): one, or TURTLE's per backbone
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import metrics, record
from .config import EvaluateConfig
from .errors import NolabelError
from .io import atomic_path, read_json, write_json
from .store import FeatureStore

CLUSTERING_JSON = "clustering.json"
ASSIGNMENTS = "assignments.csv"
METRICS_JSON = "metrics.json"
SUMMARY_JSON = "summary.json"
PCA_FILE = "pca.npz"
COLUMNS = ("row", "source", "item", "cluster", "confidence", "distance", "typicality", "label")


@dataclass
class Source:
    """A set of images a clustering assigned: `name` ("train" or an eval set's name), its dataset
    spec, the item names and labels (-1 unknown) of its rows, its class names, and the feature store
    the rows come from (None in whole-network mode, where the clustering reads images)."""

    name: str
    dataset: str
    items: list[str]
    labels: np.ndarray
    classes: list[str]
    store: FeatureStore | None = None

    @classmethod
    def of_store(cls, name: str, store: FeatureStore) -> "Source":
        return cls(name, str(store.manifest.get("dataset") or store.path), store.items, store.labels,
                   store.classes, store)


@dataclass
class SourceAssignments:
    """One source's rows of assignments.csv, in row order: (N,) arrays. `typicality` is computed from
    the other columns when not given (assignments written before it was a column)."""

    cluster: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray  # NaN where the clustering has no centroids
    label: np.ndarray
    items: list[str] = field(default_factory=list)
    typicality: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.typicality is None:
            self.typicality = typicality(self.cluster, self.distance, self.confidence)

    @property
    def has_labels(self) -> bool:
        return bool((self.label >= 0).any())

    def by_typicality(self) -> dict[int, np.ndarray]:
        """{cluster: its rows, from the most typical member to the least} by `typicality`, ties to the
        lower row; only clusters with members. The one ordering behind `outliers` and the report's montages."""
        rows = np.arange(len(self.cluster))
        order = np.lexsort((rows, -self.typicality, self.cluster))
        ids, starts = np.unique(self.cluster[order], return_index=True)
        return dict(zip(ids.tolist(), np.split(order, starts[1:])))


def typicality(cluster: np.ndarray, distance: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """(N,) float in [0, 1]: each image's rank within its cluster, from 1 for the most typical member to
    0 for the least (1 in a cluster of one). Typical means nearest to the centroid where the clustering
    has centroids (every distance finite), else most confident; ties go to the lower row.

    A rank, not a distance, so that it reads the same in a tight cluster and a spread one, and for
    every method; inputs: (N,) cluster ids, distances (NaN without centroids) and confidences."""
    cluster = np.asarray(cluster)
    key = _typical_key(np.asarray(distance, np.float64), np.asarray(confidence, np.float64))
    order = np.lexsort((np.arange(len(cluster)), key, cluster))  # by cluster, then typical first
    _, starts, sizes = np.unique(cluster[order], return_index=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    result = np.empty(len(order))
    result[order] = 1.0 - rank / np.maximum(np.repeat(sizes, sizes) - 1, 1)
    return result


def _typical_key(distance: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Smaller is more typical: the distance to the centroid where every image has one, else -confidence."""
    return distance if np.isfinite(distance).all() else -confidence


@dataclass
class Outliers:
    """The members of each cluster at both ends of typicality, and the least certain images of a source,
    as row indices into its assignments (`items[row]` names the image)."""

    most_typical: dict[int, np.ndarray]  # cluster -> rows, the most typical first
    least_typical: dict[int, np.ndarray]  # cluster -> rows, the least typical (the outliers) first
    uncertain: np.ndarray  # rows of the lowest confidence in the whole source, the lowest first
    items: list[str]


def outliers(clustering: "Clustering | str | os.PathLike", *, source: str = "train", n_per_cluster: int = 8,
             n_uncertain: int = 50) -> Outliers:
    """Per cluster its `n_per_cluster` most and least typical members (by `typicality`: nearest to or
    farthest from the centroid, or most and least confident), and the `n_uncertain` images of the
    source whose cluster is least certain (lowest confidence: nearest a boundary between two centroids,
    or the head's lowest probability). `clustering`: a Clustering, or a run or clustering folder."""
    if n_per_cluster < 0 or n_uncertain < 0:
        raise NolabelError(f"n_per_cluster and n_uncertain must be >= 0, got {n_per_cluster}, {n_uncertain}")
    if not isinstance(clustering, Clustering):
        clustering = open_run_clustering(clustering)
    if source not in clustering.assignments:
        raise NolabelError(f"{clustering.path}: no source {source!r}; it has {', '.join(clustering.sources)}")
    a = clustering.assignments[source]
    ordered = a.by_typicality()
    most = {cluster: members[:n_per_cluster] for cluster, members in ordered.items()}
    least = {cluster: members[::-1][:n_per_cluster] for cluster, members in ordered.items()}
    uncertain = np.lexsort((np.arange(len(a.cluster)), a.confidence))[:n_uncertain]
    return Outliers(most, least, uncertain, a.items)


@dataclass
class Clustering:
    """A clustering folder, read back: `info` (clustering.json), `metrics` (metrics.json) and the
    assignments of every source."""

    path: Path
    info: dict[str, Any]
    metrics: dict[str, Any]
    assignments: dict[str, SourceAssignments]

    @property
    def method(self) -> str:
        return str(self.info["method"])

    @property
    def n_clusters(self) -> int:
        return int(self.info["n_clusters"])

    @property
    def sources(self) -> list[str]:
        return list(self.assignments)

    @property
    def fingerprint(self) -> str | None:
        return record.finished_fingerprint(self.path)

    def store(self, source: str) -> FeatureStore | None:
        """The feature store of `source` (recorded relative to the clustering, so a moved run folder
        still finds it); None in whole-network mode or when it is gone."""
        recorded = self.info["sources"][source].get("store")
        if recorded is None:
            return None
        try:
            return FeatureStore.open(self.path / recorded)
        except NolabelError:
            return None

    def stores(self, source: str) -> list[FeatureStore] | None:
        """The feature stores `source`'s images are clustered from: one, or for TURTLE one per backbone
        it read (in its order); None in whole-network mode, or when one is gone or was not recorded
        (eval sets of TURTLE clusterings written before their stores were)."""
        how = self.info["assign"]
        if how["kind"] != "turtle":
            store = self.store(source)
            return None if store is None else [store]
        recorded = how["spaces"] if source == "train" else how.get("eval_spaces", {}).get(source)
        if recorded is None:
            return None
        try:
            return [FeatureStore.open(self.path / folder) for folder in recorded]
        except NolabelError:
            return None

    def dataset(self, source: str) -> str:
        return str(self.info["sources"][source]["dataset"])

    def classes(self, source: str) -> list[str]:
        return list(self.info["sources"][source].get("classes", []))

    def mapped_classes(self, source: str = "train") -> dict[int, str]:
        """cluster -> the name of the class it maps to under the metrics' mapping (the clustering's
        mapping method, fitted on `source`'s labelled images); {} when `source` has no labels. Clusters
        without a labelled member map to nothing."""
        a = self.assignments[source]
        known = a.label >= 0
        if not known.any():
            return {}
        names = self.classes(source)
        fitted = metrics.contingency(a.label[known], a.cluster[known]).mapping(
            self.info.get("evaluate", {}).get("mapping", "hungarian"))
        return {cluster: names[k] if k < len(names) else str(k) for cluster, k in fitted.as_dict().items()}


def write_clustering(folder: str | os.PathLike, *, method: str, sources: Sequence[Source],
                     clusters: Sequence[np.ndarray], confidence: Sequence[np.ndarray], n_clusters: int,
                     assigner: dict[str, Any], evaluate: EvaluateConfig = EvaluateConfig(),
                     distance: Sequence[np.ndarray] | None = None, settings: dict[str, Any] | None = None,
                     fitted: dict[str, Any] | None = None, timings: dict[str, float] | None = None
                     ) -> dict[str, Any]:
    """Write the artifact files (not the record: the stage that computed it finishes that) and
    return metrics.json's content.

    sources[0] is the train source; clusters / confidence / distance hold one (N_i,) array per source.
    assigner: how `assign` reproduces the clustering on new features - {"kind": "centroids",
    "spherical": bool} (centroids.npy, pca.npz if present) or {"kind": "head", "scan": path,
    "selflabel": path or None, "mode": "features" | "network", "image_size": ...}; paths relative to
    `folder`. fitted: facts of the fit shown beside the metrics (e.g. k-means inertia).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    distance = distance if distance is not None else [np.full(len(c), np.nan) for c in clusters]
    for source, c, p, d in zip(sources, clusters, confidence, distance):
        if not len(c) == len(p) == len(d) == len(source.items) == len(source.labels):
            raise NolabelError(f"{source.name}: {len(c)} clusters, {len(p)} confidences, {len(d)} distances for "
                               f"{len(source.items)} images")
    with atomic_path(folder / ASSIGNMENTS) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for source, c, p, d in zip(sources, clusters, confidence, distance):
                d = np.asarray(d, np.float64)
                w.writerows(zip(range(len(c)), [source.name] * len(c), source.items, np.asarray(c).tolist(),
                                np.round(np.asarray(p, np.float64), 6).tolist(),
                                ["" if not np.isfinite(v) else round(float(v), 6) for v in d],
                                np.round(typicality(c, d, p), 6).tolist(),
                                np.asarray(source.labels).tolist()))
    scored = score_sources(sources, clusters, n_clusters, evaluate)
    if fitted:
        scored["_clustering"] = {"n_clusters": n_clusters, **fitted}
    write_json(folder / METRICS_JSON, scored)
    write_json(folder / CLUSTERING_JSON, {
        "method": method,
        "n_clusters": int(n_clusters),
        "sources": {s.name: {"dataset": s.dataset, "n": len(s.items), "classes": list(s.classes),
                             "store": _relative(s.store.path, folder) if s.store is not None else None,
                             "features": s.store.fingerprint if s.store is not None else None}
                    for s in sources},
        "assign": assigner,
        "evaluate": {"mapping": evaluate.mapping, "average_method": evaluate.average_method},
        "settings": settings or {},
        "timings_seconds": {k: round(v, 3) for k, v in (timings or {}).items()},
        "versions": versions(),
    })
    return scored


def load_clustering(folder: str | os.PathLike) -> Clustering:
    """Read a finished clustering folder (any method)."""
    folder = Path(folder)
    if not (folder / CLUSTERING_JSON).is_file():
        raise NolabelError(f"{folder}: not a clustering folder (no {CLUSTERING_JSON})")
    rec = record.read(folder)
    if rec is None or not rec.get("finished"):
        raise NolabelError(f"{folder}: the clustering has not finished; run its stage again to complete it")
    info = read_json(folder / CLUSTERING_JSON)
    return Clustering(folder, info, read_json(folder / METRICS_JSON), read_assignments(folder / ASSIGNMENTS))


def read_assignments(path: Path) -> dict[str, SourceAssignments]:
    """assignments.csv split by source, rows in order. Files written before the typicality column
    existed read too (it is then computed)."""
    columns: dict[str, list[list]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            c = columns.setdefault(row["source"], [[], [], [], [], [], [], []])
            c[0].append(int(row["row"]))
            c[1].append(int(row["cluster"]))
            c[2].append(float(row["confidence"]))
            c[3].append(float(row["distance"]) if row["distance"] else np.nan)
            c[4].append(int(row["label"]))
            c[5].append(row["item"])
            c[6].append(float(row["typicality"]) if row.get("typicality") else np.nan)
    result = {}
    for source, (rows, cluster, confidence, distance, label, items, typical) in columns.items():
        order = np.argsort(np.asarray(rows), kind="stable")
        typical = np.asarray(typical)[order]
        result[source] = SourceAssignments(np.asarray(cluster, np.int64)[order], np.asarray(confidence)[order],
                                           np.asarray(distance)[order], np.asarray(label, np.int64)[order],
                                           [items[i] for i in order], typical if np.isfinite(typical).all() else None)
    return result


def open_run_clustering(path: str | os.PathLike, name: str | None = None) -> Clustering:
    """The clustering a command acts on. `path` is a clustering folder, or a run folder (`nolabel run`)
    whose primary clustering is taken - summary.json's "primary": the run's last clustering stage, or
    the one chosen without labels. `name` picks another of the run's clusterings: its folder relative
    to `path` (scan, baseline/cluster, ...) or its method in the run's results table.

    Folders recorded in summary.json are found with `recorded_folder`, so a run folder moved or copied
    since reads its own clusterings."""
    path = Path(path)
    summary_file = path / SUMMARY_JSON
    summary = read_json(summary_file) if summary_file.is_file() else None
    rows = summary.get("rows", []) if summary else []

    def recorded(folder: str) -> Path:
        return recorded_folder(path, summary, folder)

    if name is not None:
        if (path / name / CLUSTERING_JSON).is_file():
            return load_clustering(path / name)
        by_method = [row["folder"] for row in rows if row.get("method") == name]
        if by_method:
            return load_clustering(recorded(by_method[0]))
        known = [f"{_relative(recorded(row['folder']), path)} ({row.get('method')})" for row in rows]
        raise NolabelError(f"{path}: no clustering {name!r}" + (f"; the run has {', '.join(known)}" if known else ""))
    if (path / CLUSTERING_JSON).is_file():
        return load_clustering(path)
    if summary is not None:
        primary = summary.get("primary") or (rows[0]["folder"] if rows else None)  # as the report reads it
        if primary is None:
            raise NolabelError(f"{summary_file}: lists no clustering")
        return load_clustering(recorded(primary))
    if not path.is_dir():
        raise NolabelError(f"{path}: no such folder; pass a run folder (nolabel run) or a clustering folder")
    raise NolabelError(f"{path}: neither a run folder (no {SUMMARY_JSON}) nor a clustering folder (no "
                       f"{CLUSTERING_JSON}); wait for the run to finish or pass its folder")


def recorded_folder(run_dir: str | os.PathLike, summary: dict[str, Any], folder: str) -> Path:
    """A folder that `run_dir`'s summary.json records (absolute, or relative to where the run was
    made): re-rooted in `run_dir` when it lay inside the folder the run was made in - always, even when
    the recorded path still exists, so a copied run reads its own clusterings, not the original's; a
    folder outside the run as recorded."""
    try:
        return Path(run_dir) / Path(folder).relative_to(summary["folder"])
    except (KeyError, ValueError):
        return Path(folder)


def assign(clustering: Clustering | str | os.PathLike, features: np.ndarray | FeatureStore | None = None, *,
           data: str | None = None, batch_size: int = 65536, device: str = "auto"
           ) -> tuple[np.ndarray, np.ndarray]:
    """New images' clusters under `clustering`: (clusters int64 (M,), confidence float (M,)).

    features: (M, D) features of the clustering's backbone (an array or a FeatureStore) - for
    clusterings of frozen features (k-means, SCAN and self-labeling heads); for TURTLE a list of them,
    one per backbone it read (every kind also takes its features as such a list, of one); data: a
    dataset spec, for a whole-network SCAN or self-labeling clustering, whose images go through the
    network it trained.
    """
    clustering = clustering if isinstance(clustering, Clustering) else load_clustering(clustering)
    how = clustering.info["assign"]
    if how["kind"] == "turtle":
        return _assign_turtle(clustering, features)
    features = _one_backbone(clustering, features)
    if isinstance(features, FeatureStore):
        features = features.features
    if how["kind"] == "centroids":
        if features is None:
            raise NolabelError(f"{clustering.path}: a k-means clustering assigns features; pass features")
        projector = clustering_pca(clustering)
        centroids = np.load(clustering.path / "centroids.npy")
        found = [nearest_centroids(centroids, projector.transform(x) if projector is not None else x,
                                   how.get("spherical", False))
                 for x in (features[start:start + batch_size] for start in range(0, len(features), batch_size))]
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])
    if how["kind"] == "head":
        from .cluster.scan import predict_scan

        scan_dir = clustering.path / how["scan"]
        selflabel = clustering.path / how["selflabel"] if how.get("selflabel") else None
        probabilities = predict_scan(scan_dir, features=features, data=data, image_size=how.get("image_size"),
                                     selflabel_dir=selflabel, device=device)
        return probabilities.argmax(1).astype(np.int64), probabilities.max(1).astype(np.float64)
    raise NolabelError(f"{clustering.path}: unknown way to assign new images ({how['kind']!r})")


def _assign_turtle(clustering: Clustering, features) -> tuple[np.ndarray, np.ndarray]:
    """TURTLE (or its self-labeling) reads several spaces: `features` is one (M, D_i) array or
    FeatureStore per backbone, in the order of `clustering.info["assign"]["spaces"]`."""
    from .cluster.turtle import predict_turtle

    how = clustering.info["assign"]
    if not isinstance(features, (list, tuple)) or len(features) != len(how["spaces"]):
        raise NolabelError(f"{clustering.path}: a TURTLE clustering assigns one feature array per backbone it read "
                           f"({len(how['spaces'])}: {', '.join(how['spaces'])}); pass them as a list in that order")
    arrays = [f.features if isinstance(f, FeatureStore) else np.asarray(f) for f in features]
    selflabel = clustering.path / how["selflabel"] if how.get("selflabel") else None
    probabilities = predict_turtle(clustering.path / how["turtle"], arrays, selflabel)
    return probabilities.argmax(1).astype(np.int64), probabilities.max(1).astype(np.float64)


def clustering_pca(clustering: Clustering):
    """The `nolabel.cluster.pca.PCA` a clustering of frozen features projected them with before
    clustering - k-means' pca.npz, or for SCAN and self-labeling heads the SCAN stage's - or None when
    it clustered the features as they are (or has no frozen features: whole-network SCAN)."""
    from .cluster.pca import PCA

    how = clustering.info["assign"]
    folder = clustering.path / how["scan"] if how["kind"] == "head" else clustering.path
    path = folder / PCA_FILE
    return PCA.load(path) if path.is_file() else None


def clustered_space(clustering: Clustering, features: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(M, d) float32: features (M, D) of the clustering's backbone in the space the clustering was
    made in - through `clustering_pca`, rows L2-normalised for spherical k-means; for TURTLE a list of
    them, one per backbone it read, in TURTLE's spaces (`nolabel.cluster.turtle.turtle_space`). Where
    "near" means what it meant to the clustering: the report's map and `nolabel.similar` measure in
    this space."""
    how = clustering.info["assign"]
    if how["kind"] == "turtle":
        from .cluster.turtle import turtle_space

        if not isinstance(features, (list, tuple)) or len(features) != len(how["spaces"]):
            raise NolabelError(f"{clustering.path}: a TURTLE clustering's space is made of one feature array per "
                               f"backbone it read ({len(how['spaces'])}); pass them as a list in that order")
        return turtle_space(clustering.path / how["turtle"], [np.asarray(f, dtype=np.float32) for f in features])
    features = _one_backbone(clustering, features)
    pca = clustering_pca(clustering)
    x = pca.transform(features) if pca is not None else np.asarray(features, dtype=np.float32)
    if how.get("spherical"):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


def clustered_features(clustering: Clustering, source: str, rows: np.ndarray | None = None) -> np.ndarray | None:
    """(M, d) float32: the stored features of `rows` (default: every row) of `source` in the
    clustering's space (`clustered_space`); None when the clustering has no stored features
    (whole-network SCAN, or a feature store is gone)."""
    stores = clustering.stores(source)
    if stores is None:
        return None
    arrays = [store.features if rows is None else store.features[np.asarray(rows)] for store in stores]
    return clustered_space(clustering, arrays)


def _one_backbone(clustering: Clustering, features: Any) -> Any:
    """The features of a clustering that reads one backbone: given as they are, or as the list of one
    that `Clustering.stores` gives (TURTLE's callers pass one per backbone, so every caller can)."""
    if isinstance(features, (list, tuple)):
        if len(features) != 1:
            raise NolabelError(f"{clustering.path}: a {clustering.method} clustering reads the features of one "
                               f"backbone, got {len(features)}")
        return features[0]
    return features


def nearest_centroids(centroids: np.ndarray, x: np.ndarray, spherical: bool = False, batch_size: int = 65536
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clusters int64, confidence, distance), each (M,), of rows x (M, D) already in the centroids'
    space (after the clustering's PCA): the nearest centroid (faiss), confidence = 1 - d1 / d2 - the
    margin between the nearest and the second-nearest centroid (Euclidean distances, 0 on a boundary,
    1 on the centroid) - and distance = d1. Spherical clusterings compare L2-normalised rows."""
    from .cluster._faiss import import_faiss

    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if x.shape[1] != centroids.shape[1]:
        raise NolabelError(f"the centroids have {centroids.shape[1]} dimensions, the features {x.shape[1]} "
                           "(after the clustering's PCA)")
    index = import_faiss().IndexFlatL2(centroids.shape[1])  # sets faiss's thread count too
    index.add(centroids)
    k = min(2, len(centroids))
    clusters, confidence, distance = [], [], []
    for start in range(0, len(x), batch_size):
        rows = np.asarray(x[start:start + batch_size], dtype=np.float32)
        if spherical:
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        squared, found = index.search(np.ascontiguousarray(rows), k)
        d = np.sqrt(np.maximum(squared.astype(np.float64), 0.0))
        clusters.append(found[:, 0].astype(np.int64))
        distance.append(d[:, 0])
        confidence.append(1.0 - d[:, 0] / np.maximum(d[:, 1], 1e-12) if k == 2 else np.ones(len(rows)))
    return np.concatenate(clusters), np.clip(np.concatenate(confidence), 0.0, 1.0), np.concatenate(distance)


def score_sources(sources: Sequence[Source], clusters: Sequence[np.ndarray], n_clusters: int,
                  evaluate: EvaluateConfig) -> dict[str, Any]:
    """metrics.json: per source n, labelled count and cluster sizes; where labels exist the metrics
    with the cluster -> class mapping fitted on the source itself ("fit_on_eval", SCAN's protocol)
    and, for sources other than train, fitted on the train source ("fit_on_train", the fully
    unsupervised protocol of Zheltonozhskii et al.). ObjectNet sources are scored through
    ObjectNet's correspondence to ImageNet classes."""
    train, train_pred = sources[0], np.asarray(clusters[0])
    train_known = train.labels >= 0
    fit = (train.labels[train_known], train_pred[train_known]) if train_known.any() else None
    kwargs = dict(method=evaluate.mapping, average_method=evaluate.average_method)
    results: dict[str, Any] = {}
    for i, (source, pred) in enumerate(zip(sources, clusters)):
        pred, labels = np.asarray(pred), np.asarray(source.labels)
        known = labels >= 0
        entry: dict[str, Any] = {"n": int(len(pred)), "n_labelled": int(known.sum()),
                                 "cluster_sizes": np.bincount(pred, minlength=n_clusters).tolist()}
        if known.any():
            if source.dataset.startswith("objectnet"):
                entry["objectnet"] = _score_objectnet(source, pred, fit, evaluate)
            else:
                entry["fit_on_eval"] = metrics.evaluate(labels[known], pred[known], **kwargs)
                if i > 0 and fit is not None:
                    entry["fit_on_train"] = metrics.evaluate(labels[known], pred[known], fit=fit, **kwargs)
        results[source.name] = entry
    return results


def _score_objectnet(source: Source, pred: np.ndarray, fit, evaluate: EvaluateConfig) -> dict[str, Any]:
    """A sample counts as correct when the ImageNet class its cluster maps to (fitted on train) is one
    of the ImageNet classes of its ObjectNet class; classes without an ImageNet counterpart are not
    scored."""
    from .data import load

    if fit is None:
        raise NolabelError(f"{source.dataset}: scoring ObjectNet needs a labelled ImageNet train source")
    correspondence = load(source.dataset).imagenet_class_indices  # objectnet label -> ImageNet classes
    mapping = metrics.map_clusters(metrics.contingency(*fit), evaluate.mapping)
    labels = np.asarray(source.labels)
    scored = np.array([bool(correspondence.get(int(y))) for y in labels])
    if not scored.any():
        raise NolabelError(f"{source.dataset}: no ObjectNet class here has an ImageNet counterpart")
    predicted, seen = mapping.lookup(pred)  # ImageNet class per sample; unseen clusters count wrong
    correct = np.array([s and int(p) in correspondence.get(int(y), ()) for p, s, y in zip(predicted, seen, labels)])
    return {
        "accuracy_overlapping_classes": float(correct[scored].mean()),
        "n_scored": int(scored.sum()),
        "n_classes_scored": int(len({int(y) for y in labels[scored]})),
        "protocol": f"mapping fitted on train ({evaluate.mapping}), carried to ObjectNet classes",
    }


def versions() -> dict[str, str]:
    import platform

    import scipy
    import sklearn
    import torch

    from . import __version__
    from .cluster._faiss import import_faiss

    return {"nolabel": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "faiss": import_faiss().__version__,
            "torch": torch.__version__}


def _relative(path: Path, folder: Path) -> str:
    """`path` relative to `folder` (so a moved run folder still finds it), absolute if on another tree."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive
        return str(Path(path).resolve())


def format_metrics(results: dict[str, Any]) -> str:
    """A table of metrics.json: one line per (source, protocol), then the fit's own facts."""
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
    fitted = results.get("_clustering", {})
    if fitted:
        lines.append("  ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in fitted.items()))
    return "\n".join(lines)
