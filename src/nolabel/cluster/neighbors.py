"""Nearest neighbours by cosine similarity: SCAN's mining (the top-K neighbours of every feature
vector) and the search for given query vectors (`nolabel similar`).

Features are L2-normalised chunk by chunk and searched with faiss inner-product indexes, in chunks
on both sides: the database is indexed `db_chunk` rows at a time and every query chunk keeps a
running top-K, so memory stays at O(db_chunk * D + query_chunk * K) whatever N is (ImageNet's
1.28M x 2048 features never sit in RAM or GPU memory at once; a memory-mapped feature file works).
A GPU is used when faiss has one (`gpu=None`), each chunk sized to fit it.

    neighbors = mine_neighbors(features, n_neighbors=20)  # int64 (N, 20), self excluded
    similarity, rows = search_neighbors(features, queries, 20)   # (M, 20) each: the queries' neighbours
    neighbor_purity(neighbors, labels)                    # share of neighbours with the anchor's label
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NolabelError
from ..io import save_npy
from ._faiss import gpu_count, import_faiss


def _normalized(features: np.ndarray, start: int, stop: int) -> np.ndarray:
    x = np.ascontiguousarray(features[start:stop], dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def mine_neighbors(features: np.ndarray, n_neighbors: int = 20, *, query_chunk: int = 65_536, db_chunk: int = 262_144,
                   gpu: bool | None = None, threads: int | None = None, show_progress: bool = False) -> np.ndarray:
    """Indices (N, n_neighbors) int64 of each row's most cosine-similar other rows, most similar first.

    features: (N, D), any float dtype, may be a memmap. The row itself is excluded (an exact
    duplicate of it may appear). gpu: None = use one when faiss sees one.
    """
    features = np.asarray(features) if not isinstance(features, np.memmap) else features
    if features.ndim != 2:
        raise NolabelError(f"features must be a (N, D) array, got shape {features.shape}")
    n = len(features)
    if not 1 <= n_neighbors < n:
        raise NolabelError(f"n_neighbors must be between 1 and N - 1 = {n - 1}, got {n_neighbors}")
    _, found = search_neighbors(features, features, n_neighbors, exclude=np.arange(n), query_chunk=query_chunk,
                                db_chunk=db_chunk, gpu=gpu, threads=threads, show_progress=show_progress)
    return found


def search_neighbors(database: np.ndarray, queries: np.ndarray, n_neighbors: int, *,
                     exclude: np.ndarray | None = None, query_chunk: int = 65_536, db_chunk: int = 262_144,
                     gpu: bool | None = None, threads: int | None = None,
                     show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarities float32 (M, k), indices int64 (M, k)) of the rows of `database` (N, D) most
    similar to each row of `queries` (M, D), most similar first; k = min(n_neighbors, N).

    exclude: (M,) int, a database row to leave out of each query's neighbours (the query's own row;
    -1 for none); k is then min(n_neighbors, N - 1), and a query whose excluded row is not among its
    nearest (an exact duplicate took its place) loses its last neighbour instead.
    Both may be memmaps of any float dtype; the database is indexed `db_chunk` rows at a time and each
    query chunk keeps a running top-k. gpu: None = use one when faiss sees one.
    """
    if database.ndim != 2 or queries.ndim != 2 or database.shape[1] != queries.shape[1]:
        raise NolabelError(f"database and queries must be (N, D) and (M, D), got {database.shape} and {queries.shape}")
    if n_neighbors < 1:
        raise NolabelError(f"n_neighbors must be at least 1, got {n_neighbors}")
    if exclude is not None and np.shape(exclude) != (len(queries),):
        raise NolabelError(f"exclude must hold one row per query, ({len(queries)},), got shape {np.shape(exclude)}")
    n, d = database.shape
    m, want = len(queries), min(n_neighbors + (exclude is not None), n)
    faiss = import_faiss(threads)  # sets omp_set_num_threads: faiss's OpenMP default ran 5-28x slower here
    use_gpu = gpu_count(faiss) > 0 if gpu is None else gpu
    if use_gpu and gpu_count(faiss) == 0:
        raise NolabelError("gpu=True but faiss sees no GPU (is faiss-gpu installed?)")
    resources = faiss.StandardGpuResources() if use_gpu else None
    best_sim = np.full((m, want), -np.inf, dtype=np.float32)
    best_idx = np.full((m, want), -1, dtype=np.int64)

    db_starts = range(0, n, db_chunk)
    if show_progress:
        from ..progress import progress_bar

        db_starts = progress_bar(db_starts, desc="neighbours (database chunks)", unit="chunk", leave=False)
    for db_start in db_starts:
        db_stop = min(n, db_start + db_chunk)
        index = faiss.IndexFlatIP(d)
        if resources is not None:
            index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.add(_normalized(database, db_start, db_stop))
        search_k = min(want, db_stop - db_start)
        for q_start in range(0, m, query_chunk):
            q_stop = min(m, q_start + query_chunk)
            sim, idx = index.search(_normalized(queries, q_start, q_stop), search_k)
            idx = idx + db_start
            # Merge with the running top-k of this query chunk.
            all_sim = np.concatenate([best_sim[q_start:q_stop], sim], axis=1)
            all_idx = np.concatenate([best_idx[q_start:q_stop], idx], axis=1)
            order = np.argsort(-all_sim, axis=1, kind="stable")[:, :want]
            best_sim[q_start:q_stop] = np.take_along_axis(all_sim, order, 1)
            best_idx[q_start:q_stop] = np.take_along_axis(all_idx, order, 1)
        del index
    if exclude is None:
        return best_sim, best_idx
    return _drop_excluded(best_sim, best_idx, np.asarray(exclude, dtype=np.int64))


def _drop_excluded(similarity: np.ndarray, candidates: np.ndarray, exclude: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's excluded row from its candidates (M, k + 1), or its last candidate when the
    row is absent (ties with duplicates, or nothing excluded): (M, k) each."""
    is_out = candidates == exclude[:, None]
    is_out[~is_out.any(1), -1] = True
    keep = np.ones_like(is_out)
    keep[np.arange(len(candidates)), is_out.argmax(1)] = False
    shape = (len(candidates), candidates.shape[1] - 1)
    return similarity[keep].reshape(shape), candidates[keep].reshape(shape)


def neighbor_purity(neighbors: np.ndarray, labels: np.ndarray, k: int | None = None) -> float:
    """Share of (anchor, neighbour) pairs, among the first `k` neighbours, whose labels agree.

    Only anchors and neighbours with a known label (>= 0) count; NaN when none has one.
    """
    labels = np.asarray(labels)
    neighbors = np.asarray(neighbors)[:, :k]
    if len(labels) != len(neighbors):
        raise NolabelError(f"{len(neighbors)} neighbour rows but {len(labels)} labels")
    anchor = np.broadcast_to(labels[:, None], neighbors.shape)
    other = labels[neighbors]
    known = (anchor >= 0) & (other >= 0)
    return float((anchor == other)[known].mean()) if known.any() else float("nan")


def save_neighbors(path: str | Path, neighbors: np.ndarray) -> Path:
    """Write `neighbors.npy` atomically (int64 (N, K))."""
    save_npy(path, np.asarray(neighbors, dtype=np.int64))
    return Path(path)


def load_neighbors(path: str | Path, n: int | None = None) -> np.ndarray:
    """Read a neighbours file, checking it is (N, K) integer and, when `n` is given, has N = n rows."""
    path = Path(path)
    if not path.is_file():
        raise NolabelError(f"{path}: neighbours file not found; mine it first (nolabel scan --neighbors-only)")
    neighbors = np.load(path)
    if neighbors.ndim != 2 or not np.issubdtype(neighbors.dtype, np.integer):
        raise NolabelError(f"{path}: expected an integer (N, K) array, got {neighbors.dtype} {neighbors.shape}")
    if n is not None and len(neighbors) != n:
        raise NolabelError(f"{path}: {len(neighbors)} rows but the features have {n}; mine the neighbours again")
    if neighbors.size and (neighbors.min() < 0 or neighbors.max() >= len(neighbors)):
        raise NolabelError(f"{path}: neighbour indices outside 0..{len(neighbors) - 1}")
    return neighbors
