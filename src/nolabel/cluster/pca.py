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

import os
from typing import Iterator

import numpy as np

from ..errors import NolabelError
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


class PCA:
    """Principal component analysis, fitted exactly by streaming over row chunks.

    Parameters
    ----------
    n_components: components kept; None keeps min(N, D).
    whiten: divide the projections by sqrt(explained_variance_) so each has unit variance.
    l2_normalize: scale each projected (and whitened) row to unit L2 norm.
    chunk_size: rows read, converted and accumulated at a time.

    Attributes after `fit`: `mean_` (D,), `components_` (n_components, D) with orthonormal rows,
    `explained_variance_` (n_components,) with the unbiased (N - 1) normalisation,
    `explained_variance_ratio_` (n_components,) as a fraction of the total variance,
    `n_components_`, `n_samples_`. Each component's sign makes its largest-magnitude entry positive.
    """

    def __init__(self, n_components: int | None = None, whiten: bool = False,
                 l2_normalize: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE):
        if n_components is not None and (not _is_int(n_components) or n_components < 1):
            raise NolabelError(f"PCA n_components must be a positive integer or None, got {n_components!r}")
        if not _is_int(chunk_size) or chunk_size < 1:
            raise NolabelError(f"PCA chunk_size must be a positive integer, got {chunk_size!r}")
        self.n_components = n_components
        self.whiten = bool(whiten)
        self.l2_normalize = bool(l2_normalize)
        self.chunk_size = int(chunk_size)

    def fit(self, X: np.ndarray) -> "PCA":
        """Fit on X, an (N, D) array (np.memmap welcome) of any real dtype."""
        n, d = _check_2d(X, "PCA.fit")
        if n < 2:
            raise NolabelError(f"PCA needs at least 2 rows to estimate a covariance, got {n}")
        n_components = min(n, d) if self.n_components is None else self.n_components
        if n_components > min(n, d):
            raise NolabelError(
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
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        components = eigenvectors[:, order].T
        # sklearn's svd_flip convention: the largest-magnitude entry of each component is positive.
        largest = np.argmax(np.abs(components), axis=1)
        components *= np.sign(components[np.arange(d), largest])[:, None]

        self.mean_ = shift + shifted_mean
        self.components_ = components[:n_components]
        self.explained_variance_ = eigenvalues[:n_components]
        total_variance = eigenvalues.sum()
        self.explained_variance_ratio_ = (self.explained_variance_ / total_variance if total_variance > 0
                                          else np.zeros(n_components))
        self.n_components_ = n_components
        self.n_samples_ = n
        return self

    def transform(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Project X (N, D) onto the components: float32 (N, n_components), computed in float64.

        `out`, if given, is a float32 (N, n_components) array (e.g. an np.memmap) written in place.
        """
        self._check_fitted()
        n, d = _check_2d(X, "PCA.transform")
        if d != self.mean_.shape[0]:
            raise NolabelError(f"PCA.transform: X has {d} columns but the PCA was fitted on {self.mean_.shape[0]}")
        if out is None:
            out = np.empty((n, self.n_components_), dtype=np.float32)
        elif out.shape != (n, self.n_components_) or out.dtype != np.float32:
            raise NolabelError(f"PCA.transform: out must be float32 of shape {(n, self.n_components_)}, "
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

    def fit_transform(self, X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self.fit(X).transform(X, out=out)

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted PCA to an .npz file, atomically."""
        self._check_fitted()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mean=self.mean_, components=self.components_,
                     explained_variance=self.explained_variance_,
                     explained_variance_ratio=self.explained_variance_ratio_,
                     n_samples=self.n_samples_, whiten=self.whiten,
                     l2_normalize=self.l2_normalize, chunk_size=self.chunk_size)

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
        pca.n_components_ = len(pca.components_)
        pca.n_samples_ = int(data["n_samples"])
        return pca

    def _chunks(self, X: np.ndarray, what: str) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first row, float64 copy of the chunk), refusing NaN/Inf as they stream by."""
        n = X.shape[0]
        starts = range(0, n, self.chunk_size)
        for start in progress_bar(starts, desc=what, unit="chunk", enabled=len(starts) > PROGRESS_MIN_CHUNKS):
            chunk = read_rows(X, start, start + self.chunk_size, np.float64)  # a copy: shifted in place
            if not np.isfinite(chunk).all():
                bad = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
                raise NolabelError(f"{what}: row {bad} contains NaN or Inf; clean the features first")
            yield start, chunk

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NolabelError("PCA is not fitted: call fit(X) or PCA.load(path) first")


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
        raise NolabelError(f"{what}: X must be a 2-D (N, D) array, got shape {getattr(X, 'shape', type(X).__name__)}")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise NolabelError(f"{what}: X must hold real numbers, got dtype {X.dtype}")
    n, d = X.shape
    if n == 0 or d == 0:
        raise NolabelError(f"{what}: X is empty (shape {X.shape})")
    return n, d


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
