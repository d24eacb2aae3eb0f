"""Cluster quality against ground-truth labels: contingency, cluster→class mappings, ACC, NMI,
AMI, ARI, mutual information, purity and top-k accuracy.

Every function takes scikit-learn's argument order, ``(labels_true, labels_pred)``: the true class
ids first, the predicted cluster ids second (``top_k_accuracy(labels_true, scores)`` likewise). The
order matters: accuracy and purity are not symmetric (with more clusters than classes, swapping the
arguments gives a different number and no error).

Everything is derived from one contingency matrix, built once per (labels_true, labels_pred) pair::

    c = contingency(labels_true, labels_pred)  # counts (K, C), clusters (K,), classes (C,)
    c.nmi(), c.ami(), c.ari(), c.purity(), c.accuracy(c.mapping("hungarian"))

or all at once with :func:`evaluate`. Its counts have one row per cluster and one column per class,
the transpose of scikit-learn's ``contingency_matrix(labels_true, labels_pred)``. NMI, AMI, ARI and
MI equal scikit-learn's values (to floating-point rounding, tested to 1e-9) including its
conventions for degenerate labelings; the expected mutual information behind AMI is computed
exactly but far faster than scikit-learn's (see :func:`expected_mutual_info`).

Evaluation protocol (see DESIGN.md): a mapping sends every cluster to one class. "hungarian" is the
one-to-one matching of ``scipy.optimize.linear_sum_assignment(counts, maximize=True)`` on the
rectangular matrix, clusters left unmatched (K > C) taking their majority class; "majority" sends
every cluster to its majority class. The mapping is fitted either on the evaluated predictions
themselves (``fit=None``, SCAN's protocol, reported as ``fit_on="eval"``) or on separate
predictions such as the train split's (``fit=(fit_labels_true, fit_labels_pred)``, in the same
scikit-learn order; the unsupervised protocol of Zheltonozhskii et al., ``fit_on="train"``);
clusters never seen when fitting count as wrong.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import NolabelError

__all__ = [
    "AVERAGE_METHODS",
    "MAPPING_METHODS",
    "AverageMethod",
    "ClusterMapping",
    "Contingency",
    "MappingMethod",
    "accuracy",
    "ami",
    "ari",
    "as_ids",
    "assign_classes",
    "contingency",
    "evaluate",
    "evaluate_contingency",
    "expected_mutual_info",
    "load_ids",
    "map_clusters",
    "mutual_info",
    "nmi",
    "purity",
    "top_k_accuracy",
    "top_k_accuracy_from_mapping",
]

MappingMethod = Literal["hungarian", "majority"]
AverageMethod = Literal["arithmetic", "geometric", "min", "max"]
MAPPING_METHODS = ("hungarian", "majority")
AVERAGE_METHODS = ("arithmetic", "geometric", "min", "max")

# A dense K x C int64 matrix above this many cells (1 GiB) is refused rather than swapping.
_MAX_CELLS = 1 << 27

# Truncation tolerance of the expected mutual information (see expected_mutual_info).
_EMI_TOL = 1e-20
# Pairs of marginals processed together; bounds the (pairs x block) temporaries to a few MiB.
_EMI_CHUNK = 1 << 15

# Text id files: an optional column-name first line, then one integer per line.
_HEADER = re.compile(r"[A-Za-z_][\w .-]*$")
_NOT_HEADERS = ("nan", "inf", "infinity")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*$")
_SEVERAL_COLUMNS = re.compile(r"[,;\t]|\S\s+\S")


@dataclass(frozen=True, eq=False)
class ClusterMapping:
    """A cluster → class assignment, in the caller's ids.

    clusters: (K,) sorted cluster ids seen when fitting; classes: (K,) the class id each maps to.
    """

    clusters: np.ndarray
    classes: np.ndarray
    method: str

    def as_dict(self) -> dict[int, int]:
        return {int(k): int(c) for k, c in zip(self.clusters, self.classes)}

    def lookup(self, cluster_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map cluster ids (any shape) to ``(class ids, seen)``; where ``seen`` is False the
        cluster was absent when fitting and its class id is meaningless (it must count as wrong)."""
        cluster_ids = np.asarray(cluster_ids)
        pos = np.searchsorted(self.clusters, cluster_ids).clip(max=self.clusters.size - 1)
        seen = self.clusters[pos] == cluster_ids
        return self.classes[pos], seen


@dataclass(frozen=True, eq=False)
class Contingency:
    """Counts of samples per (cluster, class), with the ids the rows and columns stand for.

    counts: (K, C) int64, no empty row or column; clusters: (K,) and classes: (C,) sorted ids.
    """

    counts: np.ndarray
    clusters: np.ndarray
    classes: np.ndarray

    @property
    def n(self) -> int:
        return int(self.cluster_sizes.sum())

    @property
    def n_clusters(self) -> int:
        return self.counts.shape[0]

    @property
    def n_classes(self) -> int:
        return self.counts.shape[1]

    @functools.cached_property
    def cluster_sizes(self) -> np.ndarray:
        return self.counts.sum(axis=1)

    @functools.cached_property
    def class_sizes(self) -> np.ndarray:
        return self.counts.sum(axis=0)

    def mutual_info(self) -> float:
        """Mutual information in nats (scikit-learn's ``mutual_info_score`` formula)."""
        if self.n_clusters == 1 or self.n_classes == 1:
            return 0.0
        rows, cols = np.nonzero(self.counts)
        nz = self.counts[rows, cols]
        n = self.n
        p = nz / n
        log_outer = -np.log(self.cluster_sizes[rows] * self.class_sizes[cols]) + 2 * math.log(n)
        terms = p * (np.log(nz) - math.log(n)) + p * log_outer
        terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
        return float(max(terms.sum(), 0.0))

    def entropies(self) -> tuple[float, float]:
        """(entropy of the clusters, entropy of the classes), in nats."""
        return _entropy(self.cluster_sizes), _entropy(self.class_sizes)

    def nmi(self, average_method: AverageMethod = "arithmetic") -> float:
        """Normalised mutual information; 1.0 when both labelings are a single group."""
        _check_choice("average_method", average_method, AVERAGE_METHODS)
        if self.n_clusters == self.n_classes == 1:
            return 1.0
        mi = self.mutual_info()
        if mi == 0:
            return 0.0
        return float(mi / _generalized_mean(*self.entropies(), average_method))

    def ami(self, average_method: AverageMethod = "arithmetic") -> float:
        """Adjusted mutual information (exact expected MI), with scikit-learn's special cases:
        1.0 when both labelings are one group, 0.0 when exactly one of them is."""
        _check_choice("average_method", average_method, AVERAGE_METHODS)
        if self.n_clusters == self.n_classes == 1:
            return 1.0
        if self.n_clusters == 1 or self.n_classes == 1:
            return 0.0
        if (self.n_clusters == self.n) != (self.n_classes == self.n):
            # One labeling is all singletons: MI is the other's entropy under every permutation,
            # so MI - EMI is exactly 0. With average_method="min" the denominator is exactly 0
            # too and scikit-learn returns rounding noise (e.g. 0.75 or -1.0); 0 is the limit.
            return 0.0
        mi = self.mutual_info()
        emi = expected_mutual_info(self.counts)
        eps = np.finfo(np.float64).eps
        # normalizer >= emi and mi >= emi in exact arithmetic; keep the sign, avoid 0/0.
        denominator = _generalized_mean(*self.entropies(), average_method) - emi
        denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
        numerator = mi - emi
        numerator = min(numerator, -eps) if numerator < 0 else max(numerator, eps)
        return float(numerator / denominator)

    def ari(self) -> float:
        """Adjusted Rand index, from (ordered) pair counts in exact integer arithmetic."""
        n = self.n
        sum_squares = int(np.square(self.counts[self.counts > 0]).sum())
        cluster_only = int(np.square(self.cluster_sizes).sum()) - sum_squares  # same cluster only
        class_only = int(np.square(self.class_sizes).sum()) - sum_squares  # same class only
        both = sum_squares - n
        neither = n * n - cluster_only - class_only - sum_squares
        if cluster_only == 0 and class_only == 0:
            return 1.0
        return 2.0 * (both * neither - class_only * cluster_only) / (
            (both + class_only) * (class_only + neither)
            + (both + cluster_only) * (cluster_only + neither)
        )

    def purity(self) -> float:
        """Fraction of samples in their cluster's majority class (= majority ACC fitted here)."""
        return int(self.counts.max(axis=1).sum()) / self.n

    def mapping(self, method: MappingMethod = "hungarian") -> ClusterMapping:
        """Fit a cluster → class mapping on these counts."""
        return ClusterMapping(
            clusters=self.clusters,
            classes=self.classes[assign_classes(self.counts, method)],
            method=method,
        )

    def accuracy(self, mapping: ClusterMapping) -> float:
        """Fraction of samples whose cluster maps to their class; unseen clusters are wrong."""
        mapped, seen = mapping.lookup(self.clusters)
        col = np.searchsorted(self.classes, mapped).clip(max=self.n_classes - 1)
        hit = seen & (self.classes[col] == mapped)
        return int(self.counts[hit, col[hit]].sum()) / self.n


def contingency(labels_true, labels_pred) -> Contingency:
    """Contingency of predicted clusters (rows) against true classes (columns).

    labels_true: (N,) class ids; labels_pred: (N,) cluster ids; any integer values (negative and
    non-contiguous too). Argument order is scikit-learn's; the counts are (clusters, classes), the
    transpose of ``sklearn.metrics.cluster.contingency_matrix(labels_true, labels_pred)``.
    """
    labels = as_ids(labels_true, "labels")
    pred = as_ids(labels_pred, "pred")
    _check_same_length(pred, labels, "pred", "labels")
    clusters, pred_codes = _encode(pred)
    classes, label_codes = _encode(labels)
    n_cells = clusters.size * classes.size
    if n_cells > _MAX_CELLS:
        raise NolabelError(
            f"{clusters.size} clusters x {classes.size} classes make a {n_cells:,}-cell "
            "contingency matrix, too large to hold densely; check that pred and labels hold "
            "cluster and class ids, not per-sample values"
        )
    counts = np.bincount(pred_codes * classes.size + label_codes, minlength=n_cells)
    return Contingency(counts.reshape(clusters.size, classes.size), clusters, classes)


def assign_classes(counts: np.ndarray, method: MappingMethod = "hungarian") -> np.ndarray:
    """Column index (class) assigned to each row (cluster) of a (K, C) count matrix: (K,) int.

    hungarian: one-to-one maximum-weight matching on the rectangular matrix; rows left unmatched
    when K > C take their majority column. majority: every row takes its majority column. Ties go
    to the lowest column.
    """
    _check_choice("method", method, MAPPING_METHODS)
    assigned = np.argmax(counts, axis=1)
    if method == "hungarian":
        rows, cols = linear_sum_assignment(counts, maximize=True)
        assigned[rows] = cols
    return assigned


def map_clusters(c: Contingency, method: MappingMethod = "hungarian") -> ClusterMapping:
    """Cluster → class mapping fitted on a contingency (same as ``c.mapping(method)``)."""
    return c.mapping(method)


def accuracy(labels_true, labels_pred, method: MappingMethod = "hungarian", fit=None) -> float:
    """Clustering accuracy after mapping clusters to classes.

    labels_true: (N,) class ids; labels_pred: (N,) cluster ids (scikit-learn's order; the result
    is not symmetric in them). fit: None to fit the mapping on (labels_true, labels_pred)
    themselves, or a pair (fit_labels_true, fit_labels_pred) in the same order, e.g. the train
    split's, to fit it there and apply it to labels_pred.
    """
    _check_choice("method", method, MAPPING_METHODS)
    c = contingency(labels_true, labels_pred)
    return c.accuracy(_fit_contingency(c, fit).mapping(method))


def mutual_info(labels_true, labels_pred) -> float:
    return contingency(labels_true, labels_pred).mutual_info()


def nmi(labels_true, labels_pred, average_method: AverageMethod = "arithmetic") -> float:
    return contingency(labels_true, labels_pred).nmi(average_method)


def ami(labels_true, labels_pred, average_method: AverageMethod = "arithmetic") -> float:
    return contingency(labels_true, labels_pred).ami(average_method)


def ari(labels_true, labels_pred) -> float:
    return contingency(labels_true, labels_pred).ari()


def purity(labels_true, labels_pred) -> float:
    """Fraction of samples in their cluster's majority class (not symmetric in the arguments)."""
    return contingency(labels_true, labels_pred).purity()


def top_k_accuracy(
    labels_true, scores, k: int = 5, method: MappingMethod = "hungarian", fit=None
) -> float:
    """Fraction of samples whose class is among the classes of their k highest-scoring clusters.

    labels_true: (N,) class ids; scores: (N, K) cluster scores (column j is cluster id j), in
    scikit-learn's ``top_k_accuracy_score(y_true, y_score)`` order. Clusters are mapped to classes
    by ``method``, fitted on the argmax predictions (fit=None) or on
    fit=(fit_labels_true, fit_labels_pred). Ties among scores are broken arbitrarily.
    """
    _check_choice("method", method, MAPPING_METHODS)
    scores = _as_scores(scores)
    labels = as_ids(labels_true, "labels")
    _check_same_length(scores, labels, "scores", "labels")
    pred = np.argmax(scores, axis=1)
    fitted = _fit_contingency(contingency(labels, pred), fit)
    return top_k_accuracy_from_mapping(labels, scores, k, fitted.mapping(method))


def top_k_accuracy_from_mapping(
    labels_true: np.ndarray, scores: np.ndarray, k: int, mapping: ClusterMapping
) -> float:
    """Top-k accuracy of (N, K) scores against (N,) class ids under a fitted mapping (unseen
    clusters never match)."""
    n, n_clusters = scores.shape
    if not 1 <= k <= n_clusters:
        raise NolabelError(f"top-k needs 1 <= k <= number of clusters ({n_clusters}); got k={k}")
    cluster_class, cluster_seen = mapping.lookup(np.arange(n_clusters))
    correct = 0
    for start in range(0, n, 1 << 16):  # chunks bound the (rows x K) argpartition temporaries
        block = scores[start : start + (1 << 16)]
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        true = labels_true[start : start + len(block), None]
        match = (cluster_class[top] == true) & cluster_seen[top]
        correct += int(match.any(axis=1).sum())
    return correct / n


def evaluate(
    labels_true,
    labels_pred,
    *,
    method: MappingMethod = "hungarian",
    fit=None,
    scores=None,
    top_k: int = 5,
    average_method: AverageMethod = "arithmetic",
) -> dict:
    """All metrics of one evaluation, from a single contingency matrix.

    labels_true: (N,) class ids; labels_pred: (N,) cluster ids (scikit-learn's order).
    fit: None (mappings fitted on labels_pred itself) or a pair (fit_labels_true, fit_labels_pred)
    in the same order, e.g. the train split's. scores: optional (N, K) cluster scores (column j =
    cluster id j) adding ``top{top_k}_acc``. Returns the dict of :func:`evaluate_contingency`.
    """
    pred, labels = as_ids(labels_pred, "pred"), as_ids(labels_true, "labels")
    c = contingency(labels, pred)
    fitted = _fit_contingency(c, fit)
    result = evaluate_contingency(
        c, method=method, fit=None if fit is None else fitted, average_method=average_method
    )
    if scores is not None:
        scores = _as_scores(scores)
        _check_same_length(scores, pred, "scores", "pred")
        mapping = fitted.mapping(method)
        result[f"top{top_k}_acc"] = top_k_accuracy_from_mapping(labels, scores, top_k, mapping)
    return result


def evaluate_contingency(
    c: Contingency,
    *,
    method: MappingMethod = "hungarian",
    fit: Contingency | None = None,
    average_method: AverageMethod = "arithmetic",
) -> dict:
    """Every label-based metric of one contingency; mappings fitted on `fit` (e.g. the train
    split's contingency) when given, else on `c` itself.

    Returns a dict: acc (with ``method``), acc_hungarian, acc_majority, nmi, ami, ari, mi, purity,
    n, n_clusters, n_classes, and the protocol: mapping, fit_on ("eval" or "train"),
    average_method, n_fit (samples the mapping was fitted on).
    """
    _check_choice("method", method, MAPPING_METHODS)
    _check_choice("average_method", average_method, AVERAGE_METHODS)
    fitted = c if fit is None else fit
    acc = {m: c.accuracy(fitted.mapping(m)) for m in MAPPING_METHODS}
    return {
        "acc": acc[method],
        "acc_hungarian": acc["hungarian"],
        "acc_majority": acc["majority"],
        "nmi": c.nmi(average_method),
        "ami": c.ami(average_method),
        "ari": c.ari(),
        "mi": c.mutual_info(),
        "purity": c.purity(),
        "n": c.n,
        "n_clusters": c.n_clusters,
        "n_classes": c.n_classes,
        "mapping": method,
        "fit_on": "eval" if fit is None else "train",
        "average_method": average_method,
        "n_fit": fitted.n,
    }


def expected_mutual_info(counts: np.ndarray) -> float:
    """Expected mutual information (nats) of two random labelings with the marginals of `counts`.

    EMI = sum_{i,j} sum_n P(n | a_i, b_j, N) * (n/N) * log(N n / (a_i b_j)), where a, b are the row
    and column sums and P the hypergeometric pmf (Vinh et al. 2010). scikit-learn's
    ``expected_mutual_information`` evaluates every term, O(R*C*N): 72 s at N = 1.28M with
    R = C = 1000.
    Three observations make it fast while exact to double precision:

    1. The inner sum depends on (a_i, b_j) only, so it is computed once per distinct pair of
       marginal values and multiplied by how often each value occurs.
    2. Every term is taken relative to the pmf at its mode m = floor((a+1)(b+1)/(N+2)): weights
       w(m) = 1 and w(n±1) = w(n) * (ratio of consecutive hypergeometric pmf values), a product
       of rationals, normalised at the end by W = sum_n w(n) (since sum_n P = 1). No log-gamma
       differences of ~1e7-sized numbers are involved, so weights are more accurate than
       scikit-learn's exp(gammaln(...)) terms.
    3. The pmf is log-concave, so the ratio w(n+1)/w(n) falls with n. Walking up from the mode,
       once n > mu = ab/N (where f(n) = (n/N) log(n/mu) is positive with log f concave, so the
       summand's ratio q falls too) and q <= 1/2, the rest of the upper tail is <= the last
       term. Walking down, |f(n)| <= mu/(eN) for n <= mu, so once the ratio <= 1/2 the lower
       tail is <= w * mu/N.
       A walk stops when that bound is <= _EMI_TOL * mu / N and w <= _EMI_TOL (the normaliser's
       tail), or at the end of the support. Since W >= 1 and sum_ij a_i b_j / N^2 = 1, the whole
       truncation error of the EMI is a small multiple of _EMI_TOL = 1e-20 (absolute), far below
       the rounding error of summing the terms (~1e-16 times their magnitude) that any
       evaluation, scikit-learn's included, incurs.

    Walks advance all pairs together in numpy blocks of 8, 16, 32, ... steps, so the work is about
    twice the number of terms kept (~20-40 per pair when mu ~ 1), not R * C * N.
    """
    counts = np.asarray(counts)
    a = counts.sum(axis=1)
    b = counts.sum(axis=0)
    a, b = a[a > 0].astype(np.int64), b[b > 0].astype(np.int64)
    if a.size <= 1 or b.size <= 1:  # a labeling with zero entropy has zero (expected) MI
        return 0.0
    n = int(a.sum())
    a_values, a_mult = np.unique(a, return_counts=True)
    b_values, b_mult = np.unique(b, return_counts=True)
    pair_a = np.repeat(a_values, b_values.size)
    pair_b = np.tile(b_values, a_values.size)
    per_pair = np.empty(pair_a.size)
    for start in range(0, pair_a.size, _EMI_CHUNK):
        stop = start + _EMI_CHUNK
        per_pair[start:stop] = _expected_pair_terms(pair_a[start:stop], pair_b[start:stop], n)
    per_pair = per_pair.reshape(a_values.size, b_values.size)
    return float(a_mult.astype(np.float64) @ per_pair @ b_mult.astype(np.float64))


def _expected_pair_terms(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """E[(n_ij/N) log(N n_ij / (a b))] for n_ij ~ Hypergeometric(N, a, b), per pair (a, b)."""
    mode = (a + 1) * (b + 1) // (n + 2)
    low = np.maximum(0, a + b - n)
    high = np.minimum(a, b)
    a, b, mode = a.astype(np.float64), b.astype(np.float64), mode.astype(np.float64)
    log_mu = np.log(a) + np.log(b) - math.log(n)
    weight_sum = np.ones_like(a)  # w(mode) = 1
    term_sum = mode / n * (np.log(np.maximum(mode, 1.0)) - log_mu)
    for direction in (1, -1):
        tail_weights, tail_terms = _tail_sums(direction, a, b, n, mode, log_mu, low, high)
        weight_sum += tail_weights
        term_sum += tail_terms
    return term_sum / weight_sum


def _tail_sums(direction, a, b, n, mode, log_mu, low, high) -> tuple[np.ndarray, np.ndarray]:
    """Sums of w(k) and w(k) f(k) over k on one side of the mode (see expected_mutual_info).

    Blocks are laid out (steps, pairs) so that each step is one contiguous vector operation.
    """
    weight_sum, term_sum = np.zeros_like(a), np.zeros_like(a)
    rest = n - a - b
    active = np.flatnonzero(mode < high if direction == 1 else mode > low)
    k_last, w_last = mode[active], np.ones(active.size)
    block = 8
    while active.size:
        aa, bb, rr, lm = a[active], b[active], rest[active], log_mu[active]
        remaining = (high[active] - k_last) if direction == 1 else (k_last - low[active])
        steps = np.arange(1, min(block, int(remaining.max())) + 1, dtype=np.float64)
        k = k_last + direction * steps[:, None]
        if direction == 1:  # P(k) / P(k-1); k >= 1 here
            w = (aa + 1 - k) * (bb + 1 - k) / (k * (rr + k))
            log_k = np.log(k)
        else:  # P(k) / P(k+1); past the support (k < low) a factor is 0, so w is 0 there
            w = (k + 1) * (rr + k + 1) / ((aa - k) * (bb - k))
            log_k = np.log(np.maximum(k, 1.0))  # finite where w = 0; f(0) = 0
        w[0] *= w_last
        for i in range(1, len(w)):  # cumulative product along steps
            w[i] *= w[i - 1]
        log_k -= lm
        log_k *= k
        log_k *= w  # now w(k) * k * log(k / mu)
        weight_sum[active] += w.sum(axis=0)  # active holds each pair at most once
        term_sum[active] += log_k.sum(axis=0) / n
        k_last, w_last = k[-1], w[-1]
        keep = ~_walk_finished(
            direction, k_last, w_last, aa, bb, rr, lm, low[active], high[active], n
        )
        active, k_last, w_last = active[keep], k_last[keep], w_last[keep]
        block *= 2
    return weight_sum, term_sum


def _walk_finished(direction, k, w, a, b, rest, log_mu, low, high, n) -> np.ndarray:
    """Whether the unvisited tail beyond k is provably negligible (see expected_mutual_info)."""
    if direction == 1:
        mu = np.exp(log_mu)
        next_ratio = (a - k) * (b - k) / ((k + 1) * (rest + k + 1))
        f_k = k / n * (np.log(k) - log_mu)
        f_next = (k + 1) / n * (np.log(k + 1) - log_mu)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = next_ratio * f_next / f_k
        negligible = (k > mu) & (q <= 0.5) & (w * f_k <= _EMI_TOL * mu / n) & (w <= _EMI_TOL)
        return (k >= high) | negligible
    next_ratio = k * (rest + k) / ((a - k + 1) * (b - k + 1))
    return (k <= low) | ((next_ratio <= 0.5) & (w <= _EMI_TOL))


def as_ids(values, name: str) -> np.ndarray:
    """Validate a 1-D array of integer ids (floats allowed only when integral); return int64."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise NolabelError(f"{name}: not an array of integer ids ({e})") from None
    if arr.ndim != 1:
        raise NolabelError(
            f"{name}: expected a 1-D array of shape (n_samples,), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise NolabelError(f"{name}: is empty; need at least one sample")
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
            raise NolabelError(f"{name}: ids above {np.iinfo(np.int64).max} are not supported")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise NolabelError(f"{name}: value {arr[i]} at index {i} is not a finite integer id")
        frac = arr != np.round(arr)
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise NolabelError(f"{name}: value {arr[i]} at index {i} is not an integer id")
        if np.abs(arr).max() >= 2.0**53:
            raise NolabelError(
                f"{name}: float ids beyond 2**53 are not exact; store ids as integers"
            )
        return arr.astype(np.int64)
    raise NolabelError(f"{name}: expected integer ids, got values of type {arr.dtype}")


def load_ids(path, name: str = "ids") -> np.ndarray:
    """Read (N,) integer ids from a .npy file (1-D integer array) or a one-column .csv/.txt file.

    Text files hold one integer per line. The first line may be a column name (it starts with a
    letter or underscore, e.g. ``cluster``) and is then skipped; every other line must be an
    integer, so blank lines (except at the end), extra columns, decimals and NaN are refused with
    the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise NolabelError(f"{name} file {path}: not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise NolabelError(f"{name} file {path}: not a readable .npy array ({e})") from None
        return as_ids(values, f"{name} file {path}")
    if suffix not in (".csv", ".txt"):
        raise NolabelError(
            f"{name} file {path}: unsupported type {suffix!r}; use .npy, .csv or .txt"
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise NolabelError(f"{name} file {path}: cannot be read as UTF-8 text ({e})") from None
    while lines and not lines[-1].strip():  # trailing blank lines carry nothing
        lines.pop()
    first_line = 1
    if lines and _HEADER.match(lines[0].strip()) and lines[0].strip().lower() not in _NOT_HEADERS:
        lines, first_line = lines[1:], 2
    try:
        values = np.array(lines, dtype=str).astype(np.int64)
    except (ValueError, OverflowError):
        for number, line in enumerate(lines, start=first_line):
            if not _INTEGER.match(line):
                several = _SEVERAL_COLUMNS.search(line.strip())
                what = "has more than one column" if several else "is not an integer id"
                raise NolabelError(
                    f"{name} file {path}: line {number} ({line.strip()!r}) {what}"
                ) from None
        raise NolabelError(f"{name} file {path}: an id does not fit in 64 bits") from None
    return as_ids(values, f"{name} file {path}")


def _as_scores(scores) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise NolabelError(f"scores: expected shape (n_samples, n_clusters), got {scores.shape}")
    if scores.dtype.kind not in "iuf":
        raise NolabelError(f"scores: expected numbers, got values of type {scores.dtype}")
    if scores.dtype.kind == "f" and not np.isfinite(scores).all():
        raise NolabelError("scores: contains NaN or infinite values")
    return scores


def _check_same_length(x: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise NolabelError(
            f"{x_name} has {len(x)} samples but {y_name} has {len(y)}; "
            "they must describe the same samples in the same order"
        )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise NolabelError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _fit_contingency(evaluated: Contingency, fit) -> Contingency:
    if fit is None:
        return evaluated
    try:
        fit_labels_true, fit_labels_pred = fit
    except (TypeError, ValueError):
        raise NolabelError("fit must be a pair (fit_labels_true, fit_labels_pred)") from None
    return contingency(fit_labels_true, fit_labels_pred)


def _encode(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, code of each sample in 0..len(unique)-1).

    Small id ranges (the usual 0..K-1) use a bincount presence table: several times faster than
    np.unique's sort at N ~ 1M. Wide or huge ranges fall back to np.unique.
    """
    low, high = int(ids.min()), int(ids.max())
    span = high - low + 1
    if span > 4 * ids.size + 1024:
        uniques, codes = np.unique(ids, return_inverse=True)
        return uniques, codes.reshape(-1)
    shifted = ids - low
    present = np.bincount(shifted, minlength=span) > 0
    uniques = np.flatnonzero(present) + low
    if uniques.size == span:
        return uniques, shifted
    code_of = np.cumsum(present) - 1
    return uniques, code_of[shifted]


def _entropy(sizes: np.ndarray) -> float:
    """Entropy (nats) of a partition given its group sizes (scikit-learn's formula)."""
    if sizes.size == 1:
        return 0.0
    total = sizes.sum()
    p = sizes.astype(np.float64)
    return float(-np.sum((p / total) * (np.log(p) - math.log(total))))


def _generalized_mean(u: float, v: float, average_method: str) -> float:
    if average_method == "min":
        return min(u, v)
    if average_method == "max":
        return max(u, v)
    if average_method == "geometric":
        return float(np.sqrt(u * v))
    return float(np.mean([u, v]))
