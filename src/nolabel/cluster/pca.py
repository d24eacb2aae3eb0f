"""Exact, streaming PCA for feature matrices that do not fit in memory as float64.

The (N, D) input (typically a float16 or float32 `np.memmap` written by feature extraction) is read
in row chunks; only the D-vector of sums and the D x D matrix of cross-products are kept, in
float64. The covariance's eigendecomposition then gives the components, so a 1.28M x 2048 float16
matrix needs a few chunks plus a 2048 x 2048 matrix of RAM, never a converted copy of the whole.

Numerics: each chunk is converted to float64 and shifted by a reference point (the mean of the
first chunk) before its cross-products X^T X are added with BLAS. The shift keeps the classic
E[xx^T] - mu mu^T cancellation negligible (features after a ReLU have means of the order of their
spread). Products are float64, not float32: on the development box a 4096 x 2048 chunk costs
0.20 s in float64 against 0.11 s in float32 (about one minute against half a minute for ImageNet's
1.28M x 2048), and in exchange the covariance is exact to ~1e-15 instead of ~1e-6 relative to its
largest entry, which matters because whitening divides by the smallest eigenvalues kept.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_array, validate_data

from ..errors import NolabelError, NolabelValueError
from ..io import atomic_path, read_rows
from ..progress import progress_bar

DEFAULT_CHUNK_SIZE = 8192
# Whitening divides by sqrt(explained_variance_ + WHITEN_EPS * explained_variance_[0]): the relative
# floor keeps a (numerically) zero-variance component from blowing up and changes the scale of any
# component whose variance exceeds 1e-6 of the largest by less than 1e-6.
WHITEN_EPS = 1e-12
# Inputs of more chunks than this show a progress bar.
PROGRESS_MIN_CHUNKS = 16
# Widest X for which X^T X goes to BLAS in one call; wider ones go in column blocks (`cross_products`).
SYRK_SAFE_WIDTH = 8192


# Covariances at least this wide whose leading eigenpairs are asked for with at most this share of
# the dimensions use Lanczos (ARPACK) instead of a full eigendecomposition: PCA-64 of the
# 3880-dimensional multi-level EfficientNet features took 37 s instead of 126 s (this box at load
# average 10), with the same eigenvalues to 3e-16 of the largest and the same components to 3e-15
# (benchmarks/pca_eigensolver.py). At 1280 dimensions Lanczos was not reliably faster (its speed
# depends on the spectrum's gaps), so narrower covariances keep numpy's full `eigh`.
LANCZOS_MIN_DIM = 2048
LANCZOS_MAX_SHARE = 0.25


def _leading_eigenpairs(covariance: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending, clipped at 0) of a symmetric (d, d) matrix and their
    eigenvectors as (k, d) rows. Deterministic: ARPACK starts from a fixed vector."""
    d = covariance.shape[0]
    if d >= LANCZOS_MIN_DIM and k <= LANCZOS_MAX_SHARE * d:
        from scipy.sparse.linalg import eigsh

        start = np.random.default_rng(0).standard_normal(d)
        eigenvalues, eigenvectors = eigsh(covariance, k=k, which="LA", v0=start, tol=0)
    else:
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:k]
    return np.clip(eigenvalues[order], 0.0, None), np.ascontiguousarray(eigenvectors[:, order].T)


class NotFittedError(NolabelError, SklearnNotFittedError):
    """A method that needs a fitted estimator was called first: a NolabelError and scikit-learn's
    NotFittedError (itself a ValueError and an AttributeError)."""


class PCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Principal component analysis, fitted exactly by streaming over row chunks.

    A scikit-learn estimator (get_params, clone, Pipeline, GridSearchCV); the parameters are only
    stored by the constructor and checked by `fit`, whose errors are `NolabelValueError`s (both a
    NolabelError and a ValueError).

    Parameters
    ----------
    n_components: components kept; None keeps min(N, D).
    whiten: divide the projections by sqrt(explained_variance_) so each has unit variance.
    l2_normalize: scale each projected (and whitened) row to unit L2 norm.
    chunk_size: rows read, converted and accumulated at a time.

    Attributes after `fit`: `mean_` (D,), `components_` (n_components, D) with orthonormal rows,
    `explained_variance_` (n_components,) with the unbiased (N - 1) normalisation,
    `explained_variance_ratio_` (n_components,) as a fraction of the total variance,
    `noise_variance_` (the mean variance of the components left out, probabilistic PCA's sigma^2, 0
    when none are), `n_components_`, `n_samples_`, `n_features_in_` (D). Each component's sign makes
    its largest-magnitude entry positive.

    `transform` always returns float32 (computed in float64), whatever X's dtype.
    """

    def __init__(self, n_components: int | None = None, *, whiten: bool = False,
                 l2_normalize: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.n_components = n_components
        self.whiten = whiten
        self.l2_normalize = l2_normalize
        self.chunk_size = chunk_size

    def _check_params(self) -> None:
        if self.n_components is not None and (not _is_int(self.n_components) or self.n_components < 1):
            raise NolabelValueError(
                f"PCA n_components must be a positive integer or None, got {self.n_components!r}")
        if not _is_int(self.chunk_size) or self.chunk_size < 1:
            raise NolabelValueError(f"PCA chunk_size must be a positive integer, got {self.chunk_size!r}")

    def fit(self, X: np.ndarray, y: None = None) -> "PCA":
        """Fit on X, an (N, D) array (np.memmap welcome) of any real dtype; y is ignored."""
        self._check_params()
        given = X
        X, n, d = _as_2d(X, "PCA.fit")
        if n < 2:
            raise NolabelValueError(f"PCA needs at least 2 rows to estimate a covariance, got {n} sample")
        n_components = min(n, d) if self.n_components is None else int(self.n_components)
        if n_components > min(n, d):
            raise NolabelValueError(
                f"PCA n_components={n_components} exceeds min(N, D) = min({n}, {d}); "
                f"choose n_components <= {min(n, d)}")
        shift = None
        sum_x = np.zeros(d)
        sum_xx = np.zeros((d, d))
        for start, chunk in self._chunks(X, "PCA fit"):
            if shift is None:
                shift = chunk.mean(axis=0)
            chunk -= shift
            sum_x += chunk.sum(axis=0)
            sum_xx += cross_products(chunk)
        shifted_mean = sum_x / n
        covariance = (sum_xx - n * np.outer(shifted_mean, shifted_mean)) / (n - 1)
        eigenvalues, components = _leading_eigenpairs(covariance, n_components)
        # sklearn's svd_flip convention: the largest-magnitude entry of each component is positive.
        largest = np.argmax(np.abs(components), axis=1)
        components *= np.sign(components[np.arange(n_components), largest])[:, None]

        self.mean_ = shift + shifted_mean
        self.components_ = components
        self.explained_variance_ = eigenvalues
        # The total variance is the covariance's trace: the eigenvalues left out are not needed.
        total_variance = max(float(np.trace(covariance)), 0.0)
        self.explained_variance_ratio_ = (self.explained_variance_ / total_variance if total_variance > 0
                                          else np.zeros(n_components))
        # Probabilistic PCA's maximum-likelihood sigma^2 (as scikit-learn's covariance_eigh solver): the
        # mean of the d - n_components eigenvalues left out.
        self.noise_variance_ = (max((total_variance - eigenvalues.sum()) / (d - n_components), 0.0)
                                if n_components < min(n, d) else 0.0)
        self.n_components_ = n_components
        self.n_samples_ = n
        _record_features(self, given)
        return self

    def transform(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Project X (N, D) onto the components: float32 (N, n_components), computed in float64.

        `out`, if given, is a float32 (N, n_components) array (e.g. an np.memmap) written in place.
        """
        self._check_fitted()
        self._check_params()
        X, n, d = _as_2d(X, "PCA.transform", fitted=self)
        if out is None:
            out = np.empty((n, self.n_components_), dtype=np.float32)
        elif out.shape != (n, self.n_components_) or out.dtype != np.float32:
            raise NolabelValueError(f"PCA.transform: out must be float32 of shape {(n, self.n_components_)}, "
                                    f"got {out.dtype} {out.shape}")
        projection = self.components_.T
        if self.whiten:
            scale = np.sqrt(self.explained_variance_ + WHITEN_EPS * self.explained_variance_[0])
            projection = projection / np.where(scale > 0, scale, 1.0)
        for start, chunk in self._chunks(X, "PCA transform"):
            chunk -= self.mean_
            projected = chunk @ projection
            if self.l2_normalize:
                norms = np.linalg.norm(projected, axis=1, keepdims=True)
                projected /= np.where(norms > 0, norms, 1.0)
            out[start:start + len(projected)] = projected
        return out

    def fit_transform(self, X: np.ndarray, y: None = None, out: np.ndarray | None = None) -> np.ndarray:
        return self.fit(X).transform(X, out=out)

    def get_covariance(self) -> np.ndarray:
        """The (D, D) covariance of probabilistic PCA: components_.T diag(variance - sigma^2) components_
        + sigma^2 I, with sigma^2 = noise_variance_ (whiten and l2_normalize play no part)."""
        self._check_fitted()
        noise = self._noise_variance()
        excess = np.maximum(self.explained_variance_ - noise, 0.0)
        covariance = (self.components_.T * excess) @ self.components_
        covariance[np.diag_indices_from(covariance)] += noise
        return covariance

    def get_precision(self) -> np.ndarray:
        """The inverse of `get_covariance()`, (D, D), from the orthonormal components when sigma^2 > 0."""
        self._check_fitted()
        noise = self._noise_variance()
        if noise == 0.0:
            return np.linalg.inv(self.get_covariance())
        excess = np.maximum(self.explained_variance_ - noise, 0.0)
        # (sigma^2 I + C^T E C)^-1 = (I - C^T diag(E / (sigma^2 + E)) C) / sigma^2, as C C^T = I.
        precision = -(self.components_.T * (excess / (noise + excess))) @ self.components_
        precision[np.diag_indices_from(precision)] += 1.0
        return precision / noise

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Log-likelihood of each row of X (N, D) under probabilistic PCA, float64 (N,).

        The model of scikit-learn's PCA(whiten=False).score_samples (Bishop, PRML 12.2.1): a Gaussian
        with mean `mean_` and covariance `get_covariance()`.
        """
        self._check_fitted()
        self._check_params()
        X, n, d = _as_2d(X, "PCA.score_samples", fitted=self)
        precision = self.get_precision()
        sign, log_det = np.linalg.slogdet(precision)
        log_det = log_det if sign > 0 else -np.inf
        constant = 0.5 * (d * math.log(2.0 * math.pi) - log_det)
        log_like = np.empty(n)
        for start, chunk in self._chunks(X, "PCA score"):
            chunk -= self.mean_
            log_like[start:start + len(chunk)] = -0.5 * np.einsum("ij,ij->i", chunk, chunk @ precision) - constant
        return log_like

    def score(self, X: np.ndarray, y: None = None) -> float:
        """Mean log-likelihood of the rows of X under probabilistic PCA (`score_samples`); y is ignored."""
        return float(self.score_samples(X).mean())

    @property
    def _n_features_out(self) -> int:
        """Output width, for `get_feature_names_out` ("pca0", "pca1", ...)."""
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # transform returns float32 for any input
        return tags

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted PCA to an .npz file, atomically."""
        self._check_fitted()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean_, components=self.components_,
                     explained_variance=self.explained_variance_,
                     explained_variance_ratio=self.explained_variance_ratio_,
                     n_samples=self.n_samples_, whiten=bool(self.whiten),
                     l2_normalize=bool(self.l2_normalize), chunk_size=int(self.chunk_size),
                     noise_variance=self.noise_variance_)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCA":
        """Read a PCA written by `save`."""
        try:
            with np.load(path) as f:
                data = {key: f[key] for key in f.files}
        except FileNotFoundError:
            raise NolabelError(f"{path}: PCA file not found") from None
        except (OSError, ValueError) as e:
            raise NolabelError(f"{path}: not a readable .npz file ({e})") from None
        missing = {"mean", "components", "explained_variance", "explained_variance_ratio", "n_samples",
                   "whiten", "l2_normalize", "chunk_size"} - data.keys()
        if missing:
            raise NolabelError(f"{path}: not a nolabel PCA file (missing {', '.join(sorted(missing))})")
        pca = cls(n_components=len(data["components"]), whiten=bool(data["whiten"]),
                  l2_normalize=bool(data["l2_normalize"]), chunk_size=int(data["chunk_size"]))
        pca.mean_ = data["mean"]
        pca.components_ = data["components"]
        pca.explained_variance_ = data["explained_variance"]
        pca.explained_variance_ratio_ = data["explained_variance_ratio"]
        if "noise_variance" in data:  # files written before it was kept have none: score needs a refit
            pca.noise_variance_ = float(data["noise_variance"])
        pca.n_components_ = len(pca.components_)
        pca.n_samples_ = int(data["n_samples"])
        pca.n_features_in_ = pca.components_.shape[1]
        return pca

    def _noise_variance(self) -> float:
        if not hasattr(self, "noise_variance_"):
            raise NolabelError("this PCA was loaded from a file saved without noise_variance_ "
                               "(an older nolabel); fit it again to score")
        return self.noise_variance_

    def _chunks(self, X: np.ndarray, what: str) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, float64 copy of the chunk), refusing NaN/Inf as they stream by."""
        n = X.shape[0]
        starts = range(0, n, self.chunk_size)
        for start in progress_bar(starts, desc=what, unit="chunk", enabled=len(starts) > PROGRESS_MIN_CHUNKS):
            chunk = read_rows(X, start, start + self.chunk_size, np.float64)  # a copy: shifted in place
            if not np.isfinite(chunk).all():
                bad = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
                raise NolabelValueError(f"{what}: row {bad} contains NaN or Inf; clean the features first")
            yield start, chunk

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError("PCA is not fitted: call fit(X) or PCA.load(path) first")


def cross_products(x: np.ndarray) -> np.ndarray:
    """X^T X of a float (N, D) array, (D, D).

    numpy hands X.T @ X to BLAS's symmetric rank-k update, and multithreaded OpenBLAS's dsyrk
    segfaults on wide X (numpy issue 19685 and kin). Reproduced here with numpy 2.4's OpenBLAS 0.3.31
    and 2,000 or 8,192 rows: D = 16,384 and 17,280 crash every time, D <= 14,000 and one thread pass.
    Above SYRK_SAFE_WIDTH the product goes in column blocks, which are general matrix products: twice
    the flops, no crash.
    """
    d = x.shape[1]
    if d <= SYRK_SAFE_WIDTH:
        return x.T @ x
    out = np.empty((d, d), dtype=np.result_type(x.dtype, np.float32))
    for start in range(0, d, SYRK_SAFE_WIDTH):
        out[:, start:start + SYRK_SAFE_WIDTH] = x.T @ x[:, start:start + SYRK_SAFE_WIDTH]
    return out


def _check_2d(X: np.ndarray, what: str) -> tuple[int, int]:
    if not hasattr(X, "ndim") or X.ndim != 2:
        hint = (". Reshape your data with X.reshape(-1, 1) (one feature) or X.reshape(1, -1) (one sample)"
                if getattr(X, "ndim", None) == 1 else "")
        raise NolabelValueError(
            f"{what}: X must be a 2-D (N, D) array, got shape {getattr(X, 'shape', type(X).__name__)}{hint}")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise NolabelValueError(f"{what}: X must hold real numbers, got dtype {X.dtype} (Complex data not supported)")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise NolabelValueError(f"{what}: X must hold real numbers, got dtype {X.dtype}")
    n, d = X.shape
    if n == 0:
        raise NolabelValueError(f"{what}: X is empty: 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
    if d == 0:
        raise NolabelValueError(f"{what}: X is empty: 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    return n, d


def _as_2d(X, what: str, fitted: BaseEstimator | None = None) -> tuple[np.ndarray, int, int]:
    """X as the estimators read it, with its (N, D); `fitted`: the estimator whose D it must match.

    A numpy array (np.memmap included) is used as it is, never copied or scanned here: the estimators
    stream it in chunks and refuse NaN/Inf chunk by chunk. Anything else (a list, a DataFrame, an
    object array) goes through scikit-learn's `check_array` first; sparse matrices are refused.
    """
    if sparse.issparse(X):
        raise NolabelValueError(f"{what}: sparse input is not supported; pass a dense (N, D) array")
    given = X
    if not isinstance(X, np.ndarray) or X.dtype == object:
        X = check_array(X, dtype="numeric", ensure_2d=False, allow_nd=True, ensure_all_finite=False,
                        ensure_min_samples=0, ensure_min_features=0)
    n, d = _check_2d(X, what)
    if fitted is not None:
        expected = fitted.n_features_in_
        if d != expected:
            raise NolabelValueError(f"{what}: X has {d} features, but {type(fitted).__name__} is expecting "
                                    f"{expected} features as input (the columns it was fitted on)")
        validate_data(fitted, given, reset=False, skip_check_array=True)  # feature-name checks
    return X, n, d


def _record_features(estimator: BaseEstimator, X) -> None:
    """Set n_features_in_ (and feature_names_in_ for a DataFrame) at the end of a successful fit."""
    validate_data(estimator, X, reset=True, skip_check_array=True)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
