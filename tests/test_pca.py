"""PCA against a float64 SVD of the same data, streamed from a float16 memmap on disk."""
import tracemalloc

import numpy as np
import pytest

from nolabel.cluster import PCA
from nolabel.errors import NolabelError

N, D, RANK = 3000, 48, 6


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Low-rank signal + noise with a non-zero mean, stored as a float16 memmap like extracted features."""
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((N, RANK)) * np.linspace(8, 2, RANK) @ np.linalg.qr(rng.standard_normal((D, RANK)))[0].T
    values = 3.0 + signal + 0.3 * rng.standard_normal((N, D))
    path = tmp_path_factory.mktemp("pca") / "features.npy"
    memmap = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(N, D))
    memmap[:] = values
    memmap.flush()
    return np.load(path, mmap_mode="r")


def svd_reference(X):
    X64 = np.asarray(X, dtype=np.float64)
    mean = X64.mean(axis=0)
    _, singular, vt = np.linalg.svd(X64 - mean, full_matrices=False)
    return mean, vt, singular ** 2 / (len(X64) - 1), X64


def aligned(components, reference):
    return components * np.sign(np.sum(components * reference, axis=1))[:, None]


def test_matches_float64_svd(features):
    mean, vt, variance, X64 = svd_reference(features)
    pca = PCA(n_components=20, chunk_size=512).fit(features)
    assert pca.n_components_ == 20 and pca.n_samples_ == N
    np.testing.assert_allclose(pca.mean_, mean, rtol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_, variance[:20], rtol=1e-6)
    np.testing.assert_allclose(pca.explained_variance_ratio_, variance[:20] / variance.sum(), rtol=1e-6)
    np.testing.assert_allclose(aligned(pca.components_, vt[:20]), vt[:20], atol=1e-6)
    projected = pca.transform(features)
    assert projected.dtype == np.float32 and projected.shape == (N, 20)
    signs = np.sign(np.sum(pca.components_ * vt[:20], axis=1))
    reference = (X64 - mean) @ vt[:20].T
    np.testing.assert_allclose(projected * signs, reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max())


def test_wide_features_take_the_lanczos_solver_with_the_same_result(monkeypatch):
    """d >= LANCZOS_MIN_DIM and few components: ARPACK's leading eigenpairs, checked against a float64
    SVD and scikit-learn's probabilistic PCA (noise variance from the trace, not the left-out eigenvalues)."""
    from sklearn.decomposition import PCA as SklearnPCA

    from nolabel.cluster import pca as pca_module

    rng = np.random.default_rng(1)
    d, k = 64, 8
    X = rng.standard_normal((1200, d)) * np.linspace(4, 0.1, d) + rng.standard_normal((1200, 1))
    monkeypatch.setattr(pca_module, "LANCZOS_MIN_DIM", d)
    assert d >= pca_module.LANCZOS_MIN_DIM and k <= pca_module.LANCZOS_MAX_SHARE * d
    mean, vt, variance, X64 = svd_reference(X)
    with monkeypatch.context() as patch:  # the full eigendecomposition must not be what runs
        patch.setattr(np.linalg, "eigh", lambda *a, **k: pytest.fail("full eigh used"))
        pca = PCA(n_components=k).fit(X)
    np.testing.assert_allclose(pca.explained_variance_, variance[:k], rtol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_ratio_, variance[:k] / variance.sum(), rtol=1e-9)
    np.testing.assert_allclose(aligned(pca.components_, vt[:k]), vt[:k], atol=1e-8)
    reference = SklearnPCA(n_components=k, svd_solver="full").fit(X)
    np.testing.assert_allclose(pca.noise_variance_, reference.noise_variance_, rtol=1e-9)
    np.testing.assert_allclose(pca.score(X), reference.score(X), rtol=1e-9)
    again = PCA(n_components=k).fit(X)
    assert np.array_equal(again.components_, pca.components_)  # a fixed start vector: deterministic


def test_wide_inputs_take_column_blocks_with_the_same_result(features, monkeypatch):
    import nolabel.cluster.pca as pca_module

    reference = PCA(RANK).fit(features)
    monkeypatch.setattr(pca_module, "SYRK_SAFE_WIDTH", 7)  # 48 columns: 7 blocks, the last one short
    x = np.asarray(features[:100], dtype=np.float64)
    np.testing.assert_allclose(pca_module.cross_products(x), x.T @ x.copy(), rtol=1e-12)
    blocked = PCA(RANK).fit(features)
    np.testing.assert_allclose(blocked.components_, reference.components_, atol=1e-10)
    np.testing.assert_allclose(blocked.explained_variance_, reference.explained_variance_, rtol=1e-10)


@pytest.mark.slow
def test_cross_products_wider_than_openblas_syrk_survives():
    from nolabel.cluster.pca import cross_products

    # One X^T X call of this shape segfaults the process (multithreaded OpenBLAS 0.3.31 dsyrk, every time
    # on the development machine; 500 rows passed). 2.4 GB, ~20 s.
    x = np.random.default_rng(0).standard_normal((2_000, 17_280))
    out = cross_products(x)
    np.testing.assert_allclose(out[:5, -5:], x[:, :5].T @ x[:, -5:], rtol=1e-12)
    np.testing.assert_allclose(np.diag(out)[:100], (x[:, :100] ** 2).sum(0), rtol=1e-12)


def test_sign_convention_largest_entry_positive(features):
    pca = PCA(n_components=10).fit(features)
    largest = np.argmax(np.abs(pca.components_), axis=1)
    assert (pca.components_[np.arange(10), largest] > 0).all()
    np.testing.assert_allclose(pca.components_ @ pca.components_.T, np.eye(10), atol=1e-12)


def test_chunked_equals_unchunked(features):
    small = PCA(n_components=8, chunk_size=7).fit(features)
    whole = PCA(n_components=8, chunk_size=N).fit(features)
    np.testing.assert_allclose(small.explained_variance_, whole.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(small.components_, whole.components_, atol=1e-10)
    np.testing.assert_allclose(small.transform(features), whole.transform(features), rtol=1e-6, atol=1e-5)


def test_fit_streams_without_converting_the_whole_matrix(features):
    tracemalloc.start()
    PCA(n_components=8, chunk_size=256).fit(features)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole_float64 = N * D * 8
    assert peak < whole_float64 / 4


def test_whitening_gives_unit_variance(features):
    white = PCA(n_components=10, whiten=True).fit_transform(features)
    np.testing.assert_allclose(white.astype(np.float64).var(axis=0, ddof=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-4)


def test_l2_normalize_after_whitening(features):
    pca = PCA(n_components=10, whiten=True, l2_normalize=True).fit(features)
    rows = pca.transform(features)
    np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float64), axis=1), 1.0, rtol=1e-6)
    plain = PCA(n_components=10, whiten=True).fit(features).transform(features)
    np.testing.assert_allclose(rows, plain / np.linalg.norm(plain, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_transform_writes_into_out(features, tmp_path):
    pca = PCA(n_components=4).fit(features)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(N, 4))
    assert pca.transform(features, out=out) is out
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), pca.transform(features))


def test_save_load_roundtrip(features, tmp_path):
    pca = PCA(n_components=5, whiten=True, l2_normalize=True).fit(features)
    pca.save(tmp_path / "pca.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["pca.npz"]
    loaded = PCA.load(tmp_path / "pca.npz")
    assert (loaded.whiten, loaded.l2_normalize, loaded.n_components_, loaded.n_samples_) == (True, True, 5, N)
    np.testing.assert_array_equal(loaded.transform(features), pca.transform(features))


def test_errors(features, tmp_path):
    with pytest.raises(NolabelError, match="exceeds min"):
        PCA(n_components=D + 1).fit(features)
    with pytest.raises(NolabelError, match="2-D"):
        PCA().fit(np.zeros(10))
    with pytest.raises(NolabelError, match="2-D"):
        PCA().fit(np.zeros((2, 3, 4)))
    with pytest.raises(NolabelError, match="at least 2 rows"):
        PCA().fit(np.zeros((1, 3)))
    with pytest.raises(NolabelError, match="positive integer"):
        PCA(n_components=0).fit(features)
    bad = np.array(features, dtype=np.float32)
    bad[1234, 5] = np.nan
    with pytest.raises(NolabelError, match="row 1234 contains NaN or Inf"):
        PCA(chunk_size=500).fit(bad)
    bad[1234, 5] = np.inf
    with pytest.raises(NolabelError, match="row 1234"):
        PCA(chunk_size=500).fit(bad)
    with pytest.raises(NolabelError, match="not fitted"):
        PCA().transform(features)
    with pytest.raises(NolabelError, match="columns"):
        PCA(n_components=2).fit(features).transform(np.zeros((3, D - 1)))
    with pytest.raises(NolabelError, match="not found"):
        PCA.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(NolabelError, match="not a nolabel PCA file"):
        PCA.load(tmp_path / "other.npz")
