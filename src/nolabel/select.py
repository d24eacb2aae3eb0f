"""Label-free scores of a clustering, computed in several feature spaces and averaged over them.

Without labels, the features, the number of clusters K and the method must be chosen from the
clusterings themselves. Each score here looks only at the cluster ids (an (N,) integer array,
``labels_pred``) and at feature spaces; no function takes ground-truth labels. A clustering scored
only in the space it was made in looks best there (k-means in space A maximises A's compactness),
so every score is computed in several candidate spaces - raw pixels, an ImageNet network's
features, a multi-level variant, ... - and averaged over them::

    spaces = {"pixels": P, "resnet50": R, "resnet50-multilevel": M}   # each (N, D_s)
    result = score_clustering(labels_pred, spaces)
    result["scores"]["silhouette"]["mean"], result["scores"]["silhouette"]["per_space"]["pixels"]
    consensus({"kmeans-10": a, "kmeans-20": b, "scan-20": c})          # mean AMI with the others

Preparing the spaces is the caller's job: arrays are used as given (float, finite, (N, D_s), the
same N rows in the same order as ``labels_pred``). The scores were designed for reduced,
L2-normalised features (e.g. PCA to 64 dimensions, then each row scaled to unit length), where
cosine and Euclidean geometry agree; a space of very high dimension makes the sampled scores slower.

The choice (`select_clustering`, `choose_clustering`): with candidates of several K, K is that of the
best candidate by ``k_criterion`` (default ``mean_rank``); among the candidates of that K, the best by
``criterion`` (default ``consensus``, within that K). benchmarks/label_free.py measures every score
and rule against labels.

Which rows are used
-------------------
One fixed sample ``S`` of ``sample_size`` rows (default ``DEFAULT_SAMPLE_SIZE`` = 10,000; ``None``
or a size >= N means all rows, in order) is drawn from ``random_state`` by :func:`sample_rows`: the
same rows for every clustering, every space and every sampled score, so candidates are compared on
the same rows (paired). Silhouette, k-NN consistency (as query rows), generalization and stability
use ``S``; Davies-Bouldin and balance use all N rows (they cost O(N D)).

The scores (exact definitions; K = number of distinct ids in ``labels_pred`` unless ``n_clusters``)
----------------------------------------------------------------------------------------------------
``silhouette`` (higher is better, in [-1, 1])
    Cosine silhouette of the rows ``S``, with ``S`` as the whole data set:
    ``sklearn.metrics.silhouette_score(X[S], labels_pred[S], metric="cosine")``. With unit vectors
    ``u_i = x_i / ||x_i||`` (a zero row stays zero) and cluster sums ``T_c = sum_{j in S, c(j)=c} u_j``
    over the sample, the mean cosine distance of row i to cluster c is ``(n_c - u_i . T_c) / n_c``,
    so the whole silhouette costs O(|S| K D) instead of scikit-learn's O(|S|^2 D) (0.8 s at 5k rows,
    4 s at 10k): a_i = (n_{c(i)} - u_i . T_{c(i)} - (1 - u_i . u_i)) / (n_{c(i)} - 1) (the distance of a
    row to itself is 0, as scikit-learn sets it), b_i = min over other sampled clusters of the mean
    distance, s_i = (b_i - a_i) / max(a_i, b_i), 0 for a row alone in its cluster; the score is the
    mean of s_i. Equal to scikit-learn's to floating-point rounding (tested; float64 sums, while
    scikit-learn computes float32 distances for float32 input, so expect ~1e-6 differences there).
    NaN when the sample has fewer than 2 clusters or as many clusters as rows (scikit-learn raises).

``knn_consistency`` (higher is better, in [0, 1])
    For each row i in ``S``, the share of its ``n_neighbors`` (default 20) nearest neighbours among
    ALL N rows - cosine similarity, faiss exact inner product on L2-normalised float32 rows, the row
    itself excluded (an exact duplicate of it may count) - that carry i's cluster id; the mean over
    i in ``S``. Query rows are sampled because the exact k-NN of all 70,000 rows costs 19 s per
    space here (O(N^2 D)); 10,000 queries against all rows take ~1.2-2.5 s and estimate the
    all-rows mean without bias (standard error ~0.003). The neighbours do not depend on the
    clustering: pass ``cache`` to :func:`score_clustering` to compute them once per space.

``generalization`` (higher is better, in [0, 1]; chance ~ the largest cluster's share)
    TURTLE's generalization score (Gadetsky, Jiang & Brbic, ICML 2024): the k-fold (``n_folds``,
    default 5) cross-validated accuracy of a multinomial logistic regression trained to predict the
    cluster id from the features. The rows ``S`` are shuffled (``random_state``) and split into
    ``n_folds`` folds of near-equal size (``numpy.array_split``); for each fold, a classifier with
    intercept and L2 penalty ``||W||^2 / (2 C)`` (C = 1, the penalty of TURTLE's and scikit-learn's
    LogisticRegression) on the summed cross-entropy is fitted on the other folds; the score is the
    mean over folds of the held-out accuracy. The fit is torch's full-batch L-BFGS (history 10,
    strong-Wolfe line search) from zero weights, float32, a fixed ``max_iter`` = 20 iterations.
    Measured on this box: within 0.0005 of scikit-learn's converged LogisticRegression(C=1) at
    K = 40 (20,000 rows, 0.3 s per fold where scikit-learn 1.9's lbfgs took 15-20 s per fold);
    10 iterations were 0.10 below the converged accuracy, 20 and 40 equal to it; at K = 100 (10,000
    rows) 20 iterations gave 0.7915 against 0.7957 converged - raise ``max_iter`` for K in the
    hundreds. Equal to scikit-learn's on the tests' small problem. Sampling keeps it cheap (~0.1 s
    per fold at the default 8,000 training rows); training on 8,000 rather than all rows lowers the
    accuracy a little, and more for larger K (more weights per row), like any fixed-size probe.
    Cluster ids absent from a training fold are never predicted (count as errors).

``davies_bouldin`` (LOWER is better, >= 0)
    ``sklearn.metrics.davies_bouldin_score(X, labels_pred)`` on all N rows (Euclidean distances of
    the space as given; on unit rows a monotone function of cosine). NaN for fewer than 2 clusters.

``balance`` (higher is better, in [0, 1]; does not depend on the space)
    Entropy of the cluster sizes divided by log K: ``-sum_c p_c log p_c / log K`` with p_c = n_c / N;
    1 when all K clusters have the same size, 0 when every row is in one cluster. ``n_clusters``
    (when given, >= the number of distinct ids) counts empty clusters too. 0 when K = 1.

``stability`` (higher is better; AMI, ~0 for chance agreement, 1 at most)
    Method-agnostic, needing only the assignments: does a generic clustering method, seeing only half
    of the data in this space, rediscover the clustering on the other half? ``S`` is split at random
    (``random_state``) into halves A and B; spherical k-means (:class:`nolabel.cluster.KMeans`, K
    clusters, ``n_init`` = 3, ``max_iter`` = 100, CPU) is fitted on A and assigns B to its nearest
    centroid, and the same from B to A; the score is the mean of ``AMI(labels_pred[B], kmeans_A(B))``
    and ``AMI(labels_pred[A], kmeans_B(A))`` (arithmetic AMI, :func:`nolabel.metrics.ami`). It needs
    no refit of the method that made the clustering (SCAN has none), and the k-means fits depend on
    the clustering only through K, so ``cache`` shares them between clusterings with the same K.
    Like silhouette and Davies-Bouldin it favours compact clusters, and a k-means clustering made in
    a space scores well in that space: another reason to average over spaces.

Orientation: ``SCORES[name].higher_is_better`` (False only for Davies-Bouldin); knn_consistency,
generalization and stability also grow as K shrinks (all 1 at K = 1), so compare them across K only
together with balance and the others.

Determinism: every function returns the same value for the same inputs and ``random_state`` (a
non-negative int) on a given machine and thread count (faiss runs with
``nolabel.cluster._faiss.DEFAULT_THREADS`` unless ``threads``; torch and BLAS use their own
defaults, whose float32 reductions may round differently with another thread count).

Cost, measured (``benchmarks/label_free_scores.py`` -> ``results/label_free_scores.json``; the
2-vCPU development box, shared with other jobs: load average 2.7-3.1 in both runs): one clustering,
N = 70,000, three spaces of D = 64, K = 10-40, all six scores with the defaults, 8.9-15.8 s in total
without a cache over two runs (the process's first call includes ~2 s of torch import). For the
three spaces together: k-NN search 5-8 s, generalization 1.8-3.4 s (5.7 s with the import),
stability 1.7-2.8 s, Davies-Bouldin 0.2-0.4 s, silhouette 0.05-0.09 s, balance ~0. With ``cache``
holding the neighbours and the k-means fits, each further clustering took 2.0-4.9 s. Exact
alternatives measured: scikit-learn's cosine silhouette on the 10,000-row sample 3.4-4.1 s (ours
0.02 s, equal to 1e-9), the k-NN of all 70,000 rows 19 s per space, scikit-learn's
LogisticRegression 15-20 s per fold.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np

from .errors import NolabelError

if TYPE_CHECKING:
    from .config import SelectConfig
    from .store import FeatureStore

__all__ = [
    "ALL",
    "DEFAULT_N_FOLDS",
    "DEFAULT_N_NEIGHBORS",
    "DEFAULT_SAMPLE_SIZE",
    "SCORES",
    "Score",
    "balance",
    "choose_clustering",
    "consensus",
    "consensus_within_k",
    "davies_bouldin",
    "generalization",
    "knn_consistency",
    "sample_rows",
    "score_clustering",
    "silhouette",
    "stability",
]

DEFAULT_SAMPLE_SIZE = 10_000
DEFAULT_N_NEIGHBORS = 20
DEFAULT_N_FOLDS = 5
# Logistic regression (generalization): TURTLE's / scikit-learn's penalty, and the fixed number of
# L-BFGS iterations (20 were within 0.0005 accuracy of the converged fit; see the module docstring).
DEFAULT_C = 1.0
DEFAULT_LR_MAX_ITER = 20
# k-means of the stability score.
DEFAULT_KMEANS_N_INIT = 3
DEFAULT_KMEANS_MAX_ITER = 100

# Independent random streams drawn from one random_state, one per purpose.
_SAMPLE, _FOLDS, _HALVES, _KMEANS = range(4)
# Rows per block when the silhouette's (rows, K) similarities are formed, and per faiss query.
_ROW_BLOCK = 16_384


# --------------------------------------------------------------------------- inputs


def _check_random_state(random_state) -> int:
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise NolabelError(f"random_state must be a non-negative int, got {random_state!r}")
    return int(random_state)


def _rng(random_state: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng((_check_random_state(random_state), purpose))


def _ids(labels_pred) -> tuple[np.ndarray, int]:
    """labels_pred as codes 0..K-1 (in sorted order of the ids) and K, the number of distinct ids."""
    from .metrics import as_ids

    ids = as_ids(labels_pred, "labels_pred")
    uniques, codes = np.unique(ids, return_inverse=True)
    return codes.astype(np.int64, copy=False), len(uniques)


def _space(X, n: int | None = None, name: str = "X") -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise NolabelError(f"{name}: expected a non-empty (N, D) array, got shape {X.shape}")
    if X.dtype.kind not in "fiu":
        raise NolabelError(f"{name}: expected numbers, got dtype {X.dtype}")
    if n is not None and X.shape[0] != n:
        raise NolabelError(f"{name}: {X.shape[0]} rows but labels_pred has {n}")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise NolabelError(f"{name}: contains NaN or infinite values")
    return X


def _n_clusters(k: int, n_clusters: int | None) -> int:
    if n_clusters is None:
        return k
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < k:
        raise NolabelError(f"n_clusters must be an int >= the {k} distinct cluster ids, got {n_clusters!r}")
    return int(n_clusters)


def sample_rows(n: int, sample_size: int | None = DEFAULT_SAMPLE_SIZE, random_state: int = 0) -> np.ndarray:
    """The sorted row indices (int64) the sampled scores use: ``sample_size`` of ``range(n)`` drawn
    without replacement from ``random_state``; all rows when ``sample_size`` is None or >= n."""
    if sample_size is not None and (isinstance(sample_size, bool) or not isinstance(sample_size, (int, np.integer))
                                    or sample_size < 2):
        raise NolabelError(f"sample_size must be an int >= 2 or None, got {sample_size!r}")
    if sample_size is None or sample_size >= n:
        _check_random_state(random_state)
        return np.arange(n, dtype=np.int64)
    rows = _rng(random_state, _SAMPLE).choice(n, size=int(sample_size), replace=False)
    return np.sort(rows).astype(np.int64)


def _unit_rows(X: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero, as scikit-learn's normalize leaves them)."""
    x = np.array(X, dtype=dtype, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    x /= norms
    return x


# --------------------------------------------------------------------------- the scores


def silhouette(X, labels_pred, *, sample_size: int | None = DEFAULT_SAMPLE_SIZE, random_state: int = 0) -> float:
    """Cosine silhouette of the sampled rows: ``silhouette_score(X[s], labels_pred[s], metric="cosine")``
    with ``s = sample_rows(N, sample_size, random_state)``, in O(|s| K D). NaN when undefined."""
    codes, _ = _ids(labels_pred)
    X = _space(X, len(codes))
    rows = sample_rows(len(codes), sample_size, random_state)
    return _silhouette(X[rows], codes[rows])


def _silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    uniques, y = np.unique(labels, return_inverse=True)
    n, k = len(y), len(uniques)
    if not 2 <= k <= n - 1:
        return float("nan")
    u = _unit_rows(X)
    sizes = np.bincount(y, minlength=k).astype(np.float64)
    sums = np.zeros((k, u.shape[1]))
    np.add.at(sums, y, u)
    s = np.empty(n)
    for start in range(0, n, _ROW_BLOCK):
        stop = min(n, start + _ROW_BLOCK)
        ub, yb = u[start:stop], y[start:stop]
        # Summed cosine distances of each row to every cluster (itself included at 1 - u.u).
        dist = sizes[None, :] - ub @ sums.T
        own = np.arange(stop - start), yb
        self_term = 1.0 - np.einsum("ij,ij->i", ub, ub)
        intra = np.maximum(dist[own] - self_term, 0.0)  # distances are >= 0; no rounding below
        dist /= sizes[None, :]
        dist[own] = np.inf
        inter = dist.min(axis=1)
        alone = sizes[yb] == 1
        with np.errstate(divide="ignore", invalid="ignore"):
            a = intra / np.where(alone, 1.0, sizes[yb] - 1)
            sb = (inter - a) / np.maximum(a, inter)
        sb[alone] = 0.0  # a row alone in its cluster: 0, as scikit-learn
        s[start:stop] = np.nan_to_num(sb)  # a = b = 0 (identical rows): 0, as scikit-learn
    return float(s.mean())


def knn_consistency(X, labels_pred, *, n_neighbors: int = DEFAULT_N_NEIGHBORS,
                    sample_size: int | None = DEFAULT_SAMPLE_SIZE, random_state: int = 0,
                    threads: int | None = None) -> float:
    """Mean over the sampled rows of the share of their ``n_neighbors`` cosine nearest neighbours
    (among all N rows, self excluded) in the same cluster."""
    codes, _ = _ids(labels_pred)
    X = _space(X, len(codes))
    rows = sample_rows(len(codes), sample_size, random_state)
    return _knn_consistency(_neighbors(X, rows, n_neighbors, threads), codes, rows)


def _knn_consistency(neighbors: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> float:
    return float((codes[neighbors] == codes[rows][:, None]).mean())


def _neighbors(X: np.ndarray, rows: np.ndarray, k: int, threads: int | None) -> np.ndarray:
    """(len(rows), k) int64: each sampled row's k most cosine-similar other rows of X."""
    from .cluster._faiss import import_faiss

    n, d = X.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise NolabelError(f"n_neighbors must be an int between 1 and N - 1 = {n - 1}, got {k!r}")
    faiss = import_faiss(threads)  # faiss's default OpenMP settings ran 5-28x slower here
    index = faiss.IndexFlatIP(d)
    for start in range(0, n, 262_144):
        index.add(np.ascontiguousarray(_unit_rows(X[start:start + 262_144], np.float32)))
    out = np.empty((len(rows), k), dtype=np.int64)
    for start in range(0, len(rows), _ROW_BLOCK):
        block = rows[start:start + _ROW_BLOCK]
        _, idx = index.search(np.ascontiguousarray(_unit_rows(X[block], np.float32)), k + 1)
        is_self = idx == block[:, None]
        # The row itself is not always first (an exact duplicate may tie with it) and, with more
        # than k duplicates, may be missing: then the last candidate is dropped instead.
        is_self[~is_self.any(axis=1), -1] = True
        first = is_self.argmax(axis=1)
        keep = np.ones(idx.shape, dtype=bool)
        keep[np.arange(len(block)), first] = False
        out[start:start + len(block)] = idx[keep].reshape(len(block), k)
    return out


def generalization(X, labels_pred, *, n_folds: int = DEFAULT_N_FOLDS,
                   sample_size: int | None = DEFAULT_SAMPLE_SIZE, random_state: int = 0,
                   C: float = DEFAULT_C, max_iter: int = DEFAULT_LR_MAX_ITER) -> float:
    """TURTLE's generalization score: mean held-out accuracy over ``n_folds`` folds of the sampled
    rows of a multinomial logistic regression (L2 penalty ``1 / (2 C)``, ``max_iter`` L-BFGS
    iterations) predicting the clustering."""
    codes, k = _ids(labels_pred)
    X = _space(X, len(codes))
    rows = sample_rows(len(codes), sample_size, random_state)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= len(rows):
        raise NolabelError(f"n_folds must be an int between 2 and the {len(rows)} sampled rows, got {n_folds!r}")
    if not C > 0 or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise NolabelError(f"C must be > 0 and max_iter a positive int, got C={C!r}, max_iter={max_iter!r}")
    folds = np.array_split(_rng(random_state, _FOLDS).permutation(rows), n_folds)
    accuracies = []
    for f, test in enumerate(folds):
        train = np.concatenate([fold for g, fold in enumerate(folds) if g != f])
        W, b = _fit_softmax(X[train], codes[train], k, float(C), int(max_iter))
        logits = np.asarray(X[test], dtype=np.float32) @ W + b
        accuracies.append(float((logits.argmax(axis=1) == codes[test]).mean()))
    return float(np.mean(accuracies))


def _fit_softmax(X: np.ndarray, y: np.ndarray, k: int, C: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights (D, k) and intercepts (k,) minimising sum of cross-entropies + ||W||^2 / (2 C)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    n, d = x.shape
    W = torch.zeros(d, k, dtype=torch.float32, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, history_size=10,
                                  line_search_fn="strong_wolfe")
    penalty = 1.0 / (2.0 * C * n)  # the objective divided by n: same minimiser, better scaled

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ W + b, t) + penalty * (W * W).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return W.detach().numpy(), b.detach().numpy()


def davies_bouldin(X, labels_pred) -> float:
    """``sklearn.metrics.davies_bouldin_score(X, labels_pred)`` on all rows; LOWER is better.
    NaN when there are fewer than 2 clusters or as many clusters as rows."""
    from sklearn.metrics import davies_bouldin_score

    codes, k = _ids(labels_pred)
    X = _space(X, len(codes))
    if not 2 <= k <= len(codes) - 1:
        return float("nan")
    return float(davies_bouldin_score(X, codes))


def balance(labels_pred, *, n_clusters: int | None = None) -> float:
    """Entropy of the cluster sizes / log K: 1 = all K clusters the same size, 0 = all rows in one.
    K = ``n_clusters`` (empty clusters count) or the number of distinct ids; 0 when K = 1."""
    codes, k = _ids(labels_pred)
    k = _n_clusters(k, n_clusters)
    if k == 1:
        return 0.0
    p = np.bincount(codes) / len(codes)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(k))


def stability(X, labels_pred, *, n_clusters: int | None = None,
              sample_size: int | None = DEFAULT_SAMPLE_SIZE, random_state: int = 0,
              n_init: int = DEFAULT_KMEANS_N_INIT, max_iter: int = DEFAULT_KMEANS_MAX_ITER,
              threads: int | None = None) -> float:
    """Mean AMI, over the two halves A, B of the sampled rows, between the clustering on one half and
    spherical k-means (K clusters) fitted on the other half and applied to it."""
    codes, k = _ids(labels_pred)
    X = _space(X, len(codes))
    k = _n_clusters(k, n_clusters)
    rows = sample_rows(len(codes), sample_size, random_state)
    halves = _halves(rows, random_state)
    predictions = _kmeans_halves(X, halves, k, random_state, n_init, max_iter, threads)
    return _stability(codes, halves, predictions)


def _halves(rows: np.ndarray, random_state: int) -> tuple[np.ndarray, np.ndarray]:
    shuffled = _rng(random_state, _HALVES).permutation(rows)
    half = len(shuffled) // 2
    return np.sort(shuffled[:half]), np.sort(shuffled[half:])


def _kmeans_halves(X: np.ndarray, halves, k: int, random_state: int, n_init: int, max_iter: int,
                   threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    """k-means fitted on each half, applied to the other: (prediction for B, prediction for A)."""
    from .cluster import KMeans

    a, b = halves
    if k > len(a):
        raise NolabelError(f"stability: K = {k} clusters but only {len(a)} rows in half the sample; "
                           "raise sample_size")
    seed = int(_rng(random_state, _KMEANS).integers(2**31 - 1))
    out = []
    for fit_rows, apply_rows in ((a, b), (b, a)):
        km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, spherical=True, random_state=seed,
                    device="cpu", threads=threads).fit(np.asarray(X[fit_rows], dtype=np.float32))
        out.append(km.predict(np.asarray(X[apply_rows], dtype=np.float32)))
    return out[0], out[1]


def _stability(codes: np.ndarray, halves, predictions) -> float:
    from .metrics import ami

    (a, b), (pred_b, pred_a) = halves, predictions
    return float((ami(codes[b], pred_b) + ami(codes[a], pred_a)) / 2)


class Score(NamedTuple):
    """An entry of SCORES: the function and the direction in which the score gets better."""

    function: Callable[..., float]
    higher_is_better: bool


#: name -> (function, higher_is_better). Every function takes (X, labels_pred, **options) except
#: balance, which takes (labels_pred, *, n_clusters) and is the same in every space.
SCORES: dict[str, Score] = {
    "silhouette": Score(silhouette, True),
    "knn_consistency": Score(knn_consistency, True),
    "generalization": Score(generalization, True),
    "davies_bouldin": Score(davies_bouldin, False),
    "balance": Score(balance, True),
    "stability": Score(stability, True),
}
ALL = tuple(SCORES)


# --------------------------------------------------------------------------- across spaces


def _fingerprint(X: np.ndarray) -> tuple:
    digest = hashlib.sha1(np.ascontiguousarray(X).view(np.uint8).reshape(-1)).hexdigest()
    return X.shape, X.dtype.str, digest


def score_clustering(labels_pred, spaces: Mapping[str, np.ndarray], *, scores: Iterable[str] = ALL,
                     sample_size: int | None = DEFAULT_SAMPLE_SIZE, random_state: int = 0,
                     n_clusters: int | None = None, n_neighbors: int = DEFAULT_N_NEIGHBORS,
                     n_folds: int = DEFAULT_N_FOLDS, threads: int | None = None,
                     cache: dict | None = None) -> dict:
    """Every requested score of one clustering in every space, and its mean over the spaces.

    labels_pred: (N,) integer cluster ids. spaces: name -> (N, D_s) features, prepared by the caller
    (see the module docstring). Each per-space value equals the score's function called with the
    same arguments (``silhouette(spaces[name], labels_pred, sample_size=..., random_state=...)``, ...);
    ``mean`` is the plain mean over spaces (NaN if any space's value is NaN).

    cache: an optional dict, kept by the caller between calls, in which the parts that do not depend
    on the clustering are stored - each space's k-NN of the sampled rows, and the stability k-means
    per K - keyed by the space's content (shape, dtype, SHA-1 of its bytes) and the settings, so a
    changed array is never served stale values. Scoring many clusterings of the same data with one
    cache computes those once.

    Returns ``{"scores": {score: {"mean", "per_space": {space: value}, "higher_is_better"}},
    "seconds": {score: {space: seconds}}, "seconds_total", "n", "n_clusters", "n_spaces",
    "sample_size" (rows actually sampled), "random_state"}``.
    """
    started = time.perf_counter()
    scores = list(scores)
    unknown = [s for s in scores if s not in SCORES]
    if unknown or not scores:
        raise NolabelError(f"unknown scores {unknown}; choose from {', '.join(SCORES)}" if unknown
                           else "no score requested")
    if not isinstance(spaces, Mapping) or not spaces:
        raise NolabelError("spaces must be a non-empty dict of name -> (N, D) features")
    codes, k_found = _ids(labels_pred)
    n = len(codes)
    k = _n_clusters(k_found, n_clusters)
    arrays = {str(name): _space(X, n, f"space {name!r}") for name, X in spaces.items()}
    rows = sample_rows(n, sample_size, random_state)
    common = {"sample_size": sample_size, "random_state": random_state}
    fingerprints = {name: _fingerprint(X) for name, X in arrays.items()} if cache is not None else {}

    def cached(key: tuple, compute: Callable):
        if cache is None:
            return compute()
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    per_space: dict[str, dict[str, float]] = {s: {} for s in scores}
    seconds: dict[str, dict[str, float]] = {s: {} for s in scores}
    for name, X in arrays.items():
        fp = fingerprints.get(name)
        for score in scores:
            t0 = time.perf_counter()
            if score == "silhouette":
                value = _silhouette(X[rows], codes[rows])
            elif score == "knn_consistency":
                neighbors = cached(("knn", fp, n_neighbors, sample_size, random_state, threads),
                                   lambda: _neighbors(X, rows, n_neighbors, threads))
                value = _knn_consistency(neighbors, codes, rows)
            elif score == "generalization":
                value = generalization(X, codes, n_folds=n_folds, **common)
            elif score == "davies_bouldin":
                value = davies_bouldin(X, codes)
            elif score == "balance":
                value = balance(codes, n_clusters=k)
            else:  # stability
                halves = _halves(rows, random_state)
                predictions = cached(
                    ("kmeans", fp, k, sample_size, random_state, DEFAULT_KMEANS_N_INIT,
                     DEFAULT_KMEANS_MAX_ITER, threads),
                    lambda: _kmeans_halves(X, halves, k, random_state, DEFAULT_KMEANS_N_INIT,
                                           DEFAULT_KMEANS_MAX_ITER, threads))
                value = _stability(codes, halves, predictions)
            per_space[score][name] = value
            seconds[score][name] = time.perf_counter() - t0
    return {
        "scores": {
            s: {"mean": float(np.mean(list(per_space[s].values()))), "per_space": per_space[s],
                "higher_is_better": SCORES[s].higher_is_better}
            for s in scores
        },
        "seconds": seconds,
        "seconds_total": time.perf_counter() - started,
        "n": n,
        "n_clusters": k,
        "n_spaces": len(arrays),
        "sample_size": len(rows),
        "random_state": random_state,
    }


def consensus(clusterings: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Each clustering's mean AMI (arithmetic, :func:`nolabel.metrics.ami`) with every other one.

    A cross-candidate score (higher is better): a clustering that the other candidates - other
    methods, K, features - largely agree with. All clusterings must cover the same N rows in the same
    order. NaN for a lone clustering.
    """
    from .metrics import ami

    if not isinstance(clusterings, Mapping) or not clusterings:
        raise NolabelError("clusterings must be a non-empty dict of name -> (N,) cluster ids")
    codes = {str(name): _ids(labels)[0] for name, labels in clusterings.items()}
    lengths = {len(c) for c in codes.values()}
    if len(lengths) != 1:
        raise NolabelError(f"clusterings have different lengths: { {k: len(c) for k, c in codes.items()} }")
    names = list(codes)
    totals = dict.fromkeys(names, 0.0)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value = ami(codes[a], codes[b])  # symmetric (arithmetic normalisation): once per pair
            totals[a] += value
            totals[b] += value
    if len(names) == 1:
        return {names[0]: float("nan")}
    return {name: totals[name] / (len(names) - 1) for name in names}


# ---------------------------------------------------------------------------------------- the choice

def scoring_space(features: np.ndarray, dims: int) -> np.ndarray:
    """A feature space as the scores see it: PCA (fitted on these rows) to `dims` dimensions (fewer
    when the features have fewer), each row L2-normalised; float32 (N, dims)."""
    from .cluster.pca import PCA

    dims = min(dims, features.shape[1], features.shape[0])
    reduced = PCA(n_components=dims).fit_transform(features)
    return (reduced / np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def rank_means(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each candidate's `mean_rank`: for every score (oriented so that higher is better), the share of
    the other candidates it beats (ties count half); averaged over the scores. In [0, 1]; NaN scores
    are left out."""
    names = list(scores)
    if len(names) < 2:
        return {name: float("nan") for name in names}
    totals = {name: [] for name in names}
    for score in next(iter(scores.values())):
        if score not in SCORES:
            continue
        sign = 1.0 if SCORES[score].higher_is_better else -1.0
        values = {name: sign * scores[name][score] for name in names if np.isfinite(scores[name][score])}
        for name, value in values.items():
            others = [v for other, v in values.items() if other != name]
            if others:
                totals[name].append(np.mean([1.0 if value > v else 0.5 if value == v else 0.0 for v in others]))
    return {name: float(np.mean(v)) if v else float("nan") for name, v in totals.items()}


def consensus_within_k(clusterings: Mapping[str, np.ndarray], n_clusters: Mapping[str, int]) -> dict[str, float]:
    """`consensus` among the candidates of the same number of clusters (AMI between clusterings of
    different K mostly measures the difference in K); NaN for a candidate alone at its K."""
    result = {}
    for k in sorted(set(n_clusters.values())):
        group = {name: labels for name, labels in clusterings.items() if n_clusters[name] == k}
        result.update(consensus(group) if len(group) > 1 else dict.fromkeys(group, float("nan")))
    return {name: result[name] for name in clusterings}


def choose_clustering(scores: Mapping[str, Mapping[str, float]], n_clusters: Mapping[str, int], criterion: str,
                      k_criterion: str) -> str:
    """The chosen candidate: when the candidates have several numbers of clusters, K is that of the
    best candidate by `k_criterion` over all of them; then the best by `criterion` among the
    candidates of that K (`choose`), ties broken by `k_criterion` (two candidates of a K have the same
    consensus)."""
    if len(set(n_clusters.values())) > 1:
        k = n_clusters[choose(scores, k_criterion)]
        scores = {name: s for name, s in scores.items() if n_clusters[name] == k}
    best = scores[choose(scores, criterion)][criterion]
    tied = {name: s for name, s in scores.items() if s[criterion] == best}
    return choose(tied, k_criterion) if len(tied) > 1 else next(iter(tied))


def choose(scores: Mapping[str, Mapping[str, float]], criterion: str) -> str:
    """The candidate with the best `criterion` (its orientation: Davies-Bouldin lower, all others
    higher); ties go to the first named. Candidates whose criterion is NaN are never chosen; a lone
    candidate is chosen whatever its scores (a rank among one is undefined)."""
    if len(scores) == 1:
        return next(iter(scores))
    lower = criterion in SCORES and not SCORES[criterion].higher_is_better
    finite = {name: s[criterion] for name, s in scores.items() if np.isfinite(s[criterion])}
    if not finite:
        raise NolabelError(f"no candidate has a finite {criterion}; choose another criterion")
    best = min(finite.values()) if lower else max(finite.values())
    return next(name for name, value in finite.items() if value == best)


def select_clustering(out: str | os.PathLike, candidates: Mapping[str, str | os.PathLike],
                      spaces: Mapping[str, FeatureStore], config: SelectConfig, *, force: bool = False
                      ) -> dict[str, Any]:
    """Score every candidate clustering without labels in every candidate space, choose one.

    candidates: {name: clustering folder}; spaces: {name: the space's train FeatureStore} - the rows
    of every store and every clustering's train source are the same images in the same order.
    Writes `out/scores.json` (each candidate's mean and per-space scores, the criterion, the choice)
    and its record; returns {"scores": {candidate: {score: mean over spaces}}, "chosen": name}.
    Nothing here reads a label."""
    from . import record
    from .clustering import load_clustering
    from .io import read_json, write_json

    out = Path(out)
    clusterings = {name: load_clustering(folder) for name, folder in candidates.items()}
    inputs = {"candidates": {name: c.fingerprint for name, c in clusterings.items()},
              "spaces": {name: store.fingerprint for name, store in spaces.items()},
              "settings": {key: value for key, value in asdict(config).items() if key != "spaces"}}
    if record.begin(out, "select", inputs, force=force, what="a label-free choice") is record.DONE:
        saved = read_json(out / "scores.json")
        return {"scores": saved["scores"], "chosen": saved["chosen"]}
    started = time.perf_counter()
    n = {store.n for store in spaces.values()} | {len(c.assignments["train"].cluster) for c in clusterings.values()}
    if len(n) != 1:
        raise NolabelError(f"the candidate spaces and clusterings hold different numbers of train images: {sorted(n)}")
    prepared = {name: scoring_space(store.features, config.score_dims) for name, store in spaces.items()}
    train = {name: c.assignments["train"].cluster for name, c in clusterings.items()}
    cache: dict = {}
    per_space, means = {}, {}
    for name, labels_pred in train.items():
        scored = score_clustering(labels_pred, prepared, sample_size=config.sample_size,
                                  random_state=config.random_state, n_clusters=clusterings[name].n_clusters,
                                  cache=cache)
        means[name] = {score: value["mean"] for score, value in scored["scores"].items()}
        per_space[name] = {score: value["per_space"] for score, value in scored["scores"].items()}
    n_clusters = {name: c.n_clusters for name, c in clusterings.items()}
    agreement = consensus_within_k(train, n_clusters)
    ranks = rank_means(means)
    for name in means:
        means[name]["consensus"] = agreement[name]
        means[name]["mean_rank"] = ranks[name]
    chosen = choose_clustering(means, n_clusters, config.criterion, config.k_criterion)
    write_json(out / "scores.json", {"criterion": config.criterion, "k_criterion": config.k_criterion,
                                     "chosen": chosen, "scores": means, "per_space": per_space,
                                     "spaces": list(prepared), "seconds": round(time.perf_counter() - started, 2)})
    record.finish(out, "select", inputs)
    return {"scores": means, "chosen": chosen}
