"""The report's 2-D map: a UMAP embedding of the clustered features, cached beside the report.

The map shows the train images of the run's primary clustering in the space the clustering was made
in (`nolabel.clustering.clustered_features`); a space wider than `MAP_PCA` dimensions (a clustering
without PCA) is first reduced to its `MAP_PCA` leading principal components, fitted on the points
mapped. Neighbours are measured as `nolabel.similar` measures them - cosine similarity, searched
with `search_neighbors` - so images near on the map are the ones listed as similar. Beyond
`max_points` images a uniform random sample of that many (seeded) is mapped, and the page says so.

UMAP runs single-threaded with a fixed `random_state` (umap-learn then reproduces an embedding
exactly). The embedding is kept in a folder beside the report with a record of what produced it
(`nolabel.record`), so writing the report again - another page size, more thumbnails - reuses it,
and any change to the clustering, the sample or the settings computes it again.

    found = embed_map(clustering, "train", Path("runs/default/report_map"))
    found.rows, found.xy                             # (M,) sorted source rows, (M, 2) float32 in [0, 1]
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .. import record
from ..cluster.neighbors import search_neighbors
from ..clustering import Clustering, clustered_features
from ..errors import NolabelError
from ..io import save_npy

MAP_POINTS = 20_000
MAP_PCA = 50
MIN_POINTS = 5  # UMAP needs a neighbourhood graph; fewer images get no map
# what `clustered_features` means; 2: a TURTLE clustering's own spaces (1 read its first backbone's features)
SPACE_VERSION = 2
UMAP_SETTINGS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}
STAGE = "report map"
ROWS, XY = "rows.npy", "xy.npy"


@dataclass(frozen=True)
class MapEmbedding:
    rows: np.ndarray  # (M,) int64: the mapped rows of the source, sorted
    xy: np.ndarray  # (M, 2) float32: their positions, scaled into [0, 1] with the aspect ratio kept
    n_total: int  # images in the source (M < n_total when sampled)
    space: str  # what was embedded, in words
    settings: dict  # UMAP's
    seconds: float  # the embedding's computing time (when it was computed, if cached)
    cached: bool


def sample_rows(n: int, max_points: int, seed: int) -> np.ndarray:
    """Every row when n <= max_points, else `max_points` rows drawn uniformly without replacement; sorted."""
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False)).astype(np.int64)


def embed_map(clustering: Clustering, source: str, cache_dir: Path, *, max_points: int = MAP_POINTS,
              seed: int = 0) -> MapEmbedding:
    """The 2-D UMAP map of `source`'s images in the clustering's space, from `cache_dir` when it holds
    this very embedding, else computed and written there. Raises NolabelError when the clustering has
    no stored features or too few images."""
    n = len(clustering.assignments[source].cluster)
    if n < MIN_POINTS:
        raise NolabelError(f"{n} images are too few for a map (at least {MIN_POINTS})")
    if clustering.stores(source) is None:
        raise NolabelError("the clustering has no stored features to map (whole-network clustering, or its "
                           "feature folder is gone)")
    rows = sample_rows(n, max_points, seed)
    settings = {**UMAP_SETTINGS, "n_neighbors": min(UMAP_SETTINGS["n_neighbors"], len(rows) - 1)}
    inputs = {"clustering": clustering.fingerprint, "space": SPACE_VERSION, "source": source, "max_points": max_points,
              "random_state": seed, "pca": MAP_PCA, "umap": settings, "umap_learn": version("umap-learn")}
    previous = record.read(cache_dir)
    if record.is_done(cache_dir, inputs) and (cache_dir / XY).is_file():
        return MapEmbedding(np.load(cache_dir / ROWS), np.load(cache_dir / XY), n, previous["info"]["space"],
                            settings, previous["info"]["seconds"], cached=True)
    ours = previous is not None and previous.get("stage") == STAGE  # an older map of this report: replace it
    record.begin(cache_dir, STAGE, inputs, force=ours, what="a report's map")

    x = clustered_features(clustering, source, rows)
    space = f"{x.shape[1]}-dimensional clustered features"
    start = time.perf_counter()
    if x.shape[1] > MAP_PCA:
        from ..cluster.pca import PCA

        x = PCA(MAP_PCA).fit_transform(x)
        space += f", reduced to their {MAP_PCA} principal components"
    xy = _scaled(_umap(x, settings, seed))
    seconds = time.perf_counter() - start
    save_npy(cache_dir / ROWS, rows)
    save_npy(cache_dir / XY, xy)
    record.finish(cache_dir, STAGE, inputs, space=space, seconds=round(seconds, 3))
    return MapEmbedding(rows, xy, n, space, settings, seconds, cached=False)


def _umap(x: np.ndarray, settings: dict, seed: int) -> np.ndarray:
    """UMAP of x (M, d) -> (M, 2), on the exact k-nearest-neighbour graph computed by faiss: umap-learn's
    own approximate search (NN-descent) took minutes on 20,000 points of this 2-vCPU machine, most of
    it compiling, where faiss takes seconds."""
    # each point's neighbourhood includes the point itself, first, as umap-learn's own search gives it
    similarity, rows = search_neighbors(x, x, settings["n_neighbors"])
    distances = np.maximum(1.0 - similarity, 0.0)  # cosine distance, the metric UMAP is told
    with warnings.catch_warnings():
        # umap-learn warns that a random_state means one thread (wanted: reproducible maps), that a
        # precomputed graph cannot place new points (not needed), and about tiny graphs' initialisation
        warnings.simplefilter("ignore")
        from umap import UMAP

        return UMAP(n_components=2, random_state=seed, n_jobs=1, precomputed_knn=(rows, distances),
                    **settings).fit_transform(x)


def _scaled(xy: np.ndarray) -> np.ndarray:
    """Shift into [0, 1] by the larger side's extent, so distances keep their proportions."""
    low = xy.min(axis=0)
    extent = float((xy.max(axis=0) - low).max()) or 1.0
    return ((xy - low) / extent).astype(np.float32)
