"""Exact Lloyd k-means over faiss's nearest-centroid search: streaming, bounded, distributed.

One Lloyd loop serves one process and `torchrun` alike. Each iteration assigns every point to its
nearest centroid, then sets every centroid to the mean of its points. Three choices make it what
faiss.Kmeans is not:

* **Every point counts.** Rows are streamed in chunks (float16/float32 memmaps are converted one
  chunk at a time) and all of them are assigned and averaged; nothing is subsampled.
* **Exact, order-free centroid sums.** Points are added to their cluster's sum as 64-bit fixed-point
  integers (scaled by a power of two chosen from N and max|x|, so float32 inputs are represented to
  ~1e-12 of their range). Integer addition is associative, so the sums are the same whatever the
  order or the number of processes adding them: an all-reduce over shards gives bit-identical
  centroids to one process. It also lets the sums be updated incrementally (only points that
  changed cluster are moved), with no drift.
* **Distance computations that cannot change an assignment are skipped** (Hamerly's bounds): each
  point keeps an upper bound on the distance to its centroid and a lower bound on the distance to
  any other, both moved by how far the centroids drift. Only points whose bounds overlap are
  checked exactly and, if still in doubt, searched again with faiss. The result stays exact Lloyd;
  after the first iterations most points are skipped, which is where the speed-up over plain
  faiss comes from (benchmarks/kmeans.py).

Empty clusters are re-seeded by splitting the largest cluster, as faiss does: the empty centroid
becomes a copy of the largest one and the two are pushed apart by 1/1024 of their coordinates'
magnitude in opposite directions, so the next assignment divides that cluster between them. It
uses only the replicated centroids and counts, so every process makes the same choice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin

from .. import distributed
from ..errors import NolabelError, NolabelValueError
from ..io import read_rows
from ..progress import progress_bar
from ._faiss import gpu_count, import_faiss
from .pca import NotFittedError, _as_2d, _is_int, _record_features, cross_products

# Rows per chunk. The chunk grid is global (chunk c holds rows [c*CHUNK_SIZE, (c+1)*CHUNK_SIZE))
# and processes own whole chunks, so every chunk is searched the same way in one process or many.
CHUNK_SIZE = 32768
SPLIT_EPS = 1.0 / 1024
# Bounds are kept in float64 but seeded from float32 arithmetic: faiss computes squared distances as
# |x|^2 + |c|^2 - 2 x.c, and the bounds' own check sums D float32 squares. Each float32 result is
# widened by this many float32 epsilons per dimension (of |x|^2 + |c|^2 for faiss's, relatively for
# the direct one), so rounding can never let a bound skip a point whose nearest centroid changed.
SEARCH_ROUNDING = 4 * float(np.finfo(np.float32).eps)
DEVICES = ("auto", "cpu", "cuda")


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """Lloyd's k-means with all points, exact sums, and optional cosine (spherical) variant.

    A scikit-learn estimator (get_params, clone, Pipeline, GridSearchCV); the parameters are only
    stored by the constructor and checked by `fit`, whose errors are `NolabelValueError`s (both a
    NolabelError and a ValueError). The defaults are those of the run configuration's `KMeansConfig`.

    Parameters
    ----------
    n_clusters: K, the number of centroids.
    init: "random" (K distinct rows of X drawn with `random_state`, taken in row order) or an
        array (K, D) of initial centroids, which fixes the start: then n_init must be 1.
    n_init: runs from different random initialisations (random_state, its generator's next draws);
        the run with the lowest inertia is kept.
    max_iter: the most centroid updates per run; a run stops earlier when no point changes cluster.
    spherical: L2-normalise the points and, after every update, the centroids (cosine k-means).
    random_state: a non-negative int seeds the choice of initial rows; None draws a fresh seed on
        every fit (under torchrun, rank 0's draw is shared so all processes still agree).
        Generators / RandomState instances are not accepted.
    device: "cpu", "cuda" (faiss-gpu if importable, else torch on CUDA for the search) or "auto"
        (cuda when a GPU is there). Bit-identical results are promised on CPU only.
    threads: faiss's OpenMP threads (default `nolabel.cluster._faiss.DEFAULT_THREADS`).
    verbose: show a progress bar over iterations (it also appears for large problems).

    Attributes after `fit`: `cluster_centers_` float32 (K, D), `labels_` int64 (N,), `inertia_`
    (sum of squared L2 distances of all points to their centroid, at the final centroids, in
    float64; for spherical, of the normalised points), `n_iter_` (centroid updates of the kept run),
    `n_features_in_` (D).

    `predict`, `transform` and `score` see X as `fit` does (L2-normalised rows when spherical).

    Under torchrun, every process calls `fit` with the same full X (e.g. the same memmap); each
    processes its own share of the rows and all end with identical attributes. `predict`,
    `transform` and `score` work on all of X in every process, without communication.
    """

    def __init__(self, n_clusters: int = 10, *, init: str | np.ndarray = "random", n_init: int = 10,
                 max_iter: int = 100, spherical: bool = False, random_state: int | None = 0,
                 device: str = "auto", threads: int | None = None, verbose: bool = False):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.spherical = spherical
        self.random_state = random_state
        self.device = device
        self.threads = threads
        self.verbose = verbose

    def _check_params(self) -> None:
        for name in ("n_clusters", "n_init", "max_iter"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise NolabelValueError(f"KMeans {name} must be a positive integer, got {value!r}")
        if self.random_state is not None and (not _is_int(self.random_state) or self.random_state < 0):
            raise NolabelValueError(
                f"KMeans random_state must be a non-negative integer or None, got {self.random_state!r}")
        if not isinstance(self.device, str) or self.device not in DEVICES:
            raise NolabelValueError(f"KMeans device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise NolabelValueError(f"KMeans threads must be a positive integer or None, got {self.threads!r}")

    def _initial_centroids(self, d: int) -> np.ndarray | None:
        """The `init` array, checked against (n_clusters, D); None for "random"."""
        k = self.n_clusters
        if isinstance(self.init, str):
            if self.init != "random":
                raise NolabelValueError(
                    f'KMeans init must be "random" or an array of shape (n_clusters, D), got {self.init!r}')
            return None
        init = np.asarray(self.init)
        if init.shape != (k, d):
            raise NolabelValueError(f"KMeans init must have shape (n_clusters, D) = {(k, d)}, got {init.shape}")
        if not (np.issubdtype(init.dtype, np.floating) or np.issubdtype(init.dtype, np.integer)):
            raise NolabelValueError(f"KMeans init must hold real numbers, got dtype {init.dtype}")
        if not np.isfinite(init).all():
            raise NolabelValueError("KMeans init contains NaN or Inf")
        if self.n_init != 1:
            raise NolabelValueError(f"KMeans init fixes the start, so n_init must be 1, got n_init={self.n_init}")
        return init

    def _seed(self) -> int:
        if self.random_state is not None:
            return int(self.random_state)
        # A fresh seed, the same in every process (rank 0's; float64 holds integers below 2**53 exactly).
        return int(_gather_scalars(float(np.random.default_rng().integers(2 ** 53)))[0])

    def fit(self, X: np.ndarray, y: None = None) -> "KMeans":
        """Cluster X (N, D), any real dtype (np.memmap welcome); y is ignored."""
        self._check_params()
        given = X
        X, n, d = _as_2d(X, "KMeans.fit")
        k = self.n_clusters
        if k > n:
            raise NolabelValueError(f"KMeans n_clusters={k} exceeds the number of points: n_samples={n}")
        init = self._initial_centroids(d)
        distributed.init()
        data = _Rows(X, bool(self.spherical))
        fixed_point_bits = data.validate()
        searcher = _make_searcher(self.device, self.threads, d)
        rng = np.random.default_rng(self._seed())
        best = None
        for _ in range(self.n_init):
            if init is None:
                rows = np.sort(rng.choice(n, size=k, replace=False))
                start = data.normalized(np.asarray(X[rows], dtype=np.float32))
            else:
                start = data.normalized(init.astype(np.float32))
            run = _Lloyd(data, searcher, k, fixed_point_bits, bool(self.verbose)).run(start, self.max_iter)
            if best is None or run.inertia < best.inertia:
                best = run
        self.cluster_centers_ = best.centroids
        self.labels_ = data.gather_labels(best.labels)
        self.inertia_ = best.inertia
        self.n_iter_ = best.n_iter
        _record_features(self, given)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Nearest centroid of each row of X (N, D): labels int64 (N,)."""
        labels = [found for _, _, _, found in self._nearest(X, "KMeans.predict")]
        return np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)

    def fit_predict(self, X: np.ndarray, y: None = None) -> np.ndarray:
        """`fit(X)` and return `labels_`."""
        return self.fit(X).labels_

    def transform(self, X: np.ndarray) -> np.ndarray:
        """L2 distances of each row of X (N, D) to every centroid: float32 (N, n_clusters), computed in float64."""
        self._check_fitted()
        X, n, d = _as_2d(X, "KMeans.transform", fitted=self)
        centroids = self.cluster_centers_.astype(np.float64)
        centroid_sq = (centroids ** 2).sum(axis=1)
        out = np.empty((n, len(centroids)), dtype=np.float32)
        rows = _Rows(X, bool(self.spherical))
        for start, stop in rows.chunk_bounds(range(rows.n_chunks)):
            x = rows.load(start, stop).astype(np.float64)
            _refuse_non_finite(x, start, stop, "KMeans.transform")
            sq = (x ** 2).sum(axis=1)[:, None] - 2 * (x @ centroids.T) + centroid_sq
            out[start:stop] = np.sqrt(np.maximum(sq, 0.0))
        return out

    def score(self, X: np.ndarray, y: None = None) -> float:
        """Minus the k-means objective on X: -(sum of squared L2 distances of the rows to their nearest
        centroid), in float64 (for the training X, -inertia_); y is ignored. Higher is better."""
        total = 0.0
        for _, x, _, labels in self._nearest(X, "KMeans.score"):
            total += float((_distances(x, self.cluster_centers_[labels]) ** 2).sum())
        return -total

    def _nearest(self, X: np.ndarray, what: str) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield (first row, float32 rows as k-means sees them, squared distances float32, labels int64) per chunk."""
        self._check_fitted()
        X, n, d = _as_2d(X, what, fitted=self)
        self._check_params()
        searcher = _make_searcher(self.device, self.threads, d)
        searcher.set_centroids(self.cluster_centers_)
        rows = _Rows(X, bool(self.spherical))
        for start, stop in rows.chunk_bounds(range(rows.n_chunks)):
            x = rows.load(start, stop)
            _refuse_non_finite(x, start, stop, what)
            found_distances, found = searcher.search(x, 1)
            yield start, x, found_distances[:, 0], found[:, 0].astype(np.int64)

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise NotFittedError("KMeans is not fitted: call fit(X) first")

    @property
    def _n_features_out(self) -> int:
        """Width of `transform`'s output, for `get_feature_names_out` ("kmeans0", ...)."""
        return self.cluster_centers_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # transform returns float32 for any input
        return tags


def _refuse_non_finite(x: np.ndarray, start: int, stop: int, what: str) -> None:
    if not np.isfinite(x).all():
        raise NolabelValueError(f"{what}: X rows {start}..{stop - 1} contain NaN or Inf")


class _Rows:
    """This process's share of X's rows, as float32 chunks (normalised for spherical k-means)."""

    def __init__(self, X: np.ndarray, spherical: bool):
        self.X = X
        self.spherical = spherical
        self.n = X.shape[0]
        self.n_chunks = -(-self.n // CHUNK_SIZE)
        self.chunks = distributed.shard(self.n_chunks)
        self.first_row = self.chunks.start * CHUNK_SIZE
        self.n_local = min(self.chunks.stop * CHUNK_SIZE, self.n) - self.first_row

    def chunk_bounds(self, chunks: range) -> Iterator[tuple[int, int]]:
        for c in chunks:
            yield c * CHUNK_SIZE, min((c + 1) * CHUNK_SIZE, self.n)

    def local(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (chunk index, offset into this process's rows, float32 chunk)."""
        for c, (start, stop) in zip(self.chunks, self.chunk_bounds(self.chunks)):
            yield c, start - self.first_row, self.load(start, stop)

    def load(self, start: int, stop: int) -> np.ndarray:
        return self.normalized(read_rows(self.X, start, stop, np.float32))

    def normalized(self, x: np.ndarray) -> np.ndarray:
        if not self.spherical:
            return x
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):  # rows holding NaN or Inf: `validate` refuses them
            return x / np.where(norms > 0, norms, 1)

    def validate(self) -> int:
        """Refuse NaN/Inf (in any process's rows); return the fixed-point scale's bits."""
        first_bad = -1
        max_abs = 0.0
        for c, offset, x in self.local():
            finite = np.isfinite(x).all(axis=1)
            if not finite.all():
                first_bad = self.first_row + offset + int(np.flatnonzero(~finite)[0])
                break
            max_abs = max(max_abs, float(np.abs(x).max()))
        bad_rows = _gather_scalars(first_bad)
        if (bad_rows >= 0).any():
            raise NolabelValueError(f"KMeans.fit: row {int(bad_rows[bad_rows >= 0].min())} of X contains NaN "
                                    "or Inf; clean the features first")
        max_abs = float(_gather_scalars(max_abs).max())
        # N values of magnitude < 2**exponent, scaled by 2**bits, must sum below 2**62.
        exponent = math.frexp(max_abs)[1]
        return 62 - math.ceil(math.log2(self.n + 1)) - exponent

    def gather_labels(self, local_labels: np.ndarray) -> np.ndarray:
        labels = torch.zeros(self.n, dtype=torch.int64)
        labels[self.first_row:self.first_row + self.n_local] = torch.from_numpy(local_labels)
        return distributed.all_reduce_sum(labels).numpy()


@dataclass
class _Run:
    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int


class _Lloyd:
    """One k-means run: per-point bounds and integer cluster sums over this process's rows."""

    def __init__(self, data: _Rows, searcher, k: int, fixed_point_bits: int, verbose: bool):
        self.data = data
        self.searcher = searcher
        self.k = k
        self.scale = 2.0 ** fixed_point_bits
        self.verbose = verbose
        n_local = data.n_local
        self.labels = np.full(n_local, -1, dtype=np.int64)
        self.upper = np.full(n_local, np.inf)  # >= distance to the assigned centroid
        self.lower = np.zeros(n_local)  # <= distance to every other centroid
        self.sums = torch.zeros((k, data.X.shape[1]), dtype=torch.int64)  # fixed-point
        self.counts = torch.zeros(k, dtype=torch.int64)

    def run(self, centroids: np.ndarray, max_iter: int) -> _Run:
        work = self.data.n * self.k * self.data.X.shape[1]
        bar = progress_bar(total=max_iter, desc="k-means", unit="iter", enabled=self.verbose or work > 1e11)
        n_iter = max_iter
        for iteration in range(max_iter):
            changed, searched = self._assign(centroids)
            empty = int((self.counts == 0).sum())
            bar.set_postfix(changed=changed, searched=f"{searched / self.data.n:.1%}", empty=empty)
            if iteration > 0 and changed == 0 and empty == 0:
                n_iter = iteration  # converged: the centroids already average these labels
                break
            new_centroids = self._centroids()
            self._move_bounds(centroids, new_centroids)
            centroids = new_centroids
            bar.update()
        else:
            self._assign(centroids)  # labels_ at the final centroids
        bar.close()
        return _Run(centroids, self.labels, self._inertia(centroids), n_iter)

    def _assign(self, centroids: np.ndarray) -> tuple[int, int]:
        """Assign every local point to its nearest centroid; update the sums; return counts changed/searched."""
        self.searcher.set_centroids(centroids)
        half_gap = _half_gap_to_nearest_other(centroids)
        max_center_sq = float((centroids.astype(np.float64) ** 2).sum(axis=1).max())
        delta_sums = torch.zeros_like(self.sums)
        delta_counts = np.zeros(self.k, dtype=np.int64)
        changed = searched = 0
        for _, offset, x in self.data.local():
            rows = slice(offset, offset + len(x))
            labels, upper, lower = self.labels[rows], self.upper[rows], self.lower[rows]
            bound = np.maximum(lower, half_gap[np.maximum(labels, 0)])
            doubtful = np.flatnonzero((upper > bound) | (labels < 0))
            known = labels[doubtful] >= 0
            tightened = doubtful[known]
            upper[tightened] = _distance_upper_bounds(x[tightened], centroids[labels[tightened]])
            doubtful = np.concatenate([tightened[upper[tightened] > bound[tightened]], doubtful[~known]])
            if doubtful.size == 0:
                continue
            searched += doubtful.size
            x_doubtful = x[doubtful]
            found_sq, found = self.searcher.search(x_doubtful, min(2, self.k))
            found_sq = found_sq.astype(np.float64)
            nearest = found[:, 0]
            slack = SEARCH_ROUNDING * x.shape[1] * (np.einsum("ij,ij->i", x_doubtful, x_doubtful) + max_center_sq)
            upper[doubtful] = np.sqrt(np.maximum(found_sq[:, 0] + slack, 0.0))
            lower[doubtful] = np.sqrt(np.maximum(found_sq[:, 1] - slack, 0.0)) if self.k > 1 else np.inf
            moved = nearest != labels[doubtful]
            if moved.any():
                changed += int(moved.sum())
                old, new = labels[doubtful][moved], nearest[moved]
                fixed = torch.from_numpy(_fixed_point(x_doubtful[moved], self.scale))
                delta_sums.index_add_(0, torch.from_numpy(new), fixed)
                delta_counts += np.bincount(new, minlength=self.k)
                was_assigned = old >= 0
                delta_sums.index_add_(0, torch.from_numpy(old[was_assigned]), -fixed[torch.from_numpy(was_assigned)])
                delta_counts -= np.bincount(old[was_assigned], minlength=self.k)
                labels[doubtful] = nearest
        # One all-reduce carries the sums, the counts and the two statistics.
        message = torch.cat([delta_sums.flatten(), torch.from_numpy(delta_counts),
                             torch.tensor([changed, searched], dtype=torch.int64)])
        distributed.all_reduce_sum(message)
        self.sums += message[:delta_sums.numel()].view_as(self.sums)
        self.counts += message[delta_sums.numel():-2]
        return int(message[-2]), int(message[-1])

    def _centroids(self) -> np.ndarray:
        """Cluster means from the sums; empty clusters re-seeded by splitting the largest."""
        counts = self.counts.numpy()
        centroids = np.zeros(self.sums.shape)
        filled = counts > 0
        centroids[filled] = self.sums.numpy()[filled].astype(np.float64) / self.scale / counts[filled, None]
        centroids = _normalized_if(self.data.spherical, centroids)
        sizes = counts.astype(np.float64)
        signs = np.where(np.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0)
        for empty in np.flatnonzero(~filled):
            largest = int(np.argmax(sizes))
            step = SPLIT_EPS * signs * (np.abs(centroids[largest]) + np.abs(centroids[largest]).mean())
            centroids[empty] = centroids[largest] + step
            centroids[largest] -= step
            sizes[empty] = sizes[largest] / 2
            sizes[largest] -= sizes[empty]
        return _normalized_if(self.data.spherical, centroids).astype(np.float32)

    def _move_bounds(self, old: np.ndarray, new: np.ndarray) -> None:
        """Loosen every point's bounds by how far the centroids moved."""
        drift = _distances(old, new) * (1 + SEARCH_ROUNDING)
        self.upper += drift[self.labels]
        if self.k > 1:
            farthest = int(np.argmax(drift))
            second = np.delete(drift, farthest).max()
            self.lower -= np.where(self.labels == farthest, second, drift[farthest])

    def _inertia(self, centroids: np.ndarray) -> float:
        """Exact sum of squared distances at `centroids`, summed per chunk in the global chunk order."""
        per_chunk = torch.zeros(self.data.n_chunks, dtype=torch.float64)
        for c, offset, x in self.data.local():
            per_chunk[c] = float((_distances(x, centroids[self.labels[offset:offset + len(x)]]) ** 2).sum())
        return float(distributed.all_reduce_sum(per_chunk).sum())


def _fixed_point(x: np.ndarray, scale: float) -> np.ndarray:
    """round(x * scale) as int64 (scale is a power of two, so only the rounding is inexact)."""
    scaled = x.astype(np.float64)
    scaled *= scale
    return np.rint(scaled, out=scaled).astype(np.int64)


def _distance_upper_bounds(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise L2 distances between float32 (m, D) arrays, computed in float32 and rounded up."""
    diff = a - b
    return np.sqrt(np.einsum("ij,ij->i", diff, diff).astype(np.float64)) * (1 + SEARCH_ROUNDING * a.shape[1])


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise exact L2 distances between (m, D) arrays, in float64."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _half_gap_to_nearest_other(centroids: np.ndarray) -> np.ndarray:
    """Half the distance from each centroid to its nearest other one (Hamerly's s(j) / 2)."""
    if len(centroids) == 1:
        return np.full(1, np.inf)
    c = centroids.astype(np.float64)
    sq = (c ** 2).sum(axis=1)
    gaps = sq[:, None] + sq[None, :] - 2 * cross_products(c.T)  # c @ c.T, safe for k > 16k
    np.fill_diagonal(gaps, np.inf)
    # The expanded form loses ~1e-16 |c|^2; shave a relative margin so the test stays conservative.
    return 0.5 * np.sqrt(np.maximum(gaps.min(axis=1) - 1e-12 * 2 * sq.max(), 0.0))


def _normalized_if(spherical: bool, centroids: np.ndarray) -> np.ndarray:
    if not spherical:
        return centroids
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids / np.where(norms > 0, norms, 1)


def _gather_scalars(value: float) -> np.ndarray:
    """Every process's `value`, by rank (an all-reduce of one-hot slots, exact since x + 0 == x)."""
    slots = torch.zeros(distributed.world_size(), dtype=torch.float64)
    slots[distributed.rank()] = value
    return distributed.all_reduce_sum(slots).numpy()


class _FaissSearcher:
    """Exhaustive nearest-centroid search with faiss (GPU index when asked and available)."""

    def __init__(self, faiss, d: int, gpu: bool):
        if gpu:
            self.index = faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), d)
        else:
            self.index = faiss.IndexFlatL2(d)

    def set_centroids(self, centroids: np.ndarray) -> None:
        self.index.reset()
        self.index.add(np.ascontiguousarray(centroids, dtype=np.float32))

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(x, dtype=np.float32), k)


class _TorchCudaSearcher:
    """Nearest-centroid search with torch on CUDA, for machines with a GPU but faiss-cpu."""

    def set_centroids(self, centroids: np.ndarray) -> None:
        self.centroids = torch.from_numpy(np.asarray(centroids, dtype=np.float32)).cuda()
        self.centroid_sq = (self.centroids ** 2).sum(dim=1)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        sq = (xt ** 2).sum(dim=1, keepdim=True) - 2 * xt @ self.centroids.T + self.centroid_sq
        found_sq, found = torch.topk(sq, k, dim=1, largest=False)
        return found_sq.clamp_min_(0).cpu().numpy(), found.cpu().numpy()


def _make_searcher(device: str, threads: int | None, d: int):
    faiss = import_faiss(threads)  # sets omp_set_num_threads: faiss's OpenMP default ran 5-28x slower here
    wants_gpu = device == "cuda" or (device == "auto" and (gpu_count(faiss) > 0 or torch.cuda.is_available()))
    if not wants_gpu:
        return _FaissSearcher(faiss, d, gpu=False)
    if gpu_count(faiss) > 0:
        return _FaissSearcher(faiss, d, gpu=True)
    if torch.cuda.is_available():
        return _TorchCudaSearcher()
    raise NolabelError('KMeans device="cuda" but no GPU is visible; use device="cpu" or "auto"')
