"""nolabel.cluster.PCA and KMeans as scikit-learn estimators: the conformance suite, meta-estimators,
clone, and the same numbers as the streaming fit always gave."""
import dataclasses
import textwrap

import numpy as np
import pytest
from distributed_helpers import run_torchrun
from scipy import sparse
from sklearn.base import clone
from sklearn.decomposition import PCA as SklearnPCA
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from nolabel.cluster import KMeans, PCA
from nolabel.config import KMeansConfig
from nolabel.errors import NolabelError, NolabelValueError

# Checks excluded from the conformance suite: none. The sample-weight equivalence checks
# (check_sample_weight_equivalence_on_dense_data / _on_sparse_data, which scikit-learn's own KMeans
# fails) do not apply: neither estimator's fit takes sample_weight, so the suite skips them, as it
# skips check_array_api_input unless SCIPY_ARRAY_API is set. Feature-name checks run only where
# pandas is installed. The whole suite takes about two seconds, so none of it is marked slow.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks(
    [
        PCA(),
        PCA(n_components=2, whiten=True, l2_normalize=True, chunk_size=7),  # many chunks per fit
        KMeans(),
        KMeans(n_clusters=3, spherical=True, n_init=2, max_iter=20, random_state=None, device="cpu"),
    ],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_conformance(estimator, check):
    check(estimator)


def blobs(n=600, d=10, k=4, seed=0, spread=8.0):
    """k well-separated Gaussian blobs in d dimensions, float32 (n, d), and their ids."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * spread
    truth = rng.integers(0, k, n)
    return (centers[truth] + rng.standard_normal((n, d))).astype(np.float32), truth


def test_kmeans_defaults_are_the_run_configuration():
    params = KMeans().get_params()
    for field in dataclasses.fields(KMeansConfig):
        assert params[field.name] == getattr(KMeansConfig(), field.name), field.name
    assert params["init"] == "random"


def test_random_init_is_the_sorted_row_sample():
    # The default init is the sampling fit always did: K distinct rows from default_rng(random_state), sorted.
    X, _ = blobs()
    rows = np.sort(np.random.default_rng(3).choice(len(X), size=6, replace=False))
    sampled = KMeans(6, n_init=1, max_iter=30, random_state=3).fit(X)
    given = KMeans(6, init=X[rows], n_init=1, max_iter=30).fit(X)
    np.testing.assert_array_equal(sampled.cluster_centers_, given.cluster_centers_)
    np.testing.assert_array_equal(sampled.labels_, given.labels_)
    assert sampled.inertia_ == given.inertia_


def test_pipeline_pca_then_kmeans_equals_the_steps(tmp_path):
    X, truth = blobs()
    memmap = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=X.shape)
    memmap[:] = X
    memmap.flush()
    X16 = np.load(tmp_path / "x.npy", mmap_mode="r")
    pipe = make_pipeline(PCA(n_components=5, whiten=True), KMeans(n_clusters=4, n_init=3))
    labels = pipe.fit_predict(X16)

    pca = PCA(n_components=5, whiten=True).fit(X16)
    reduced = pca.transform(X16)
    km = KMeans(n_clusters=4, n_init=3).fit(reduced)
    np.testing.assert_array_equal(labels, km.labels_)
    np.testing.assert_array_equal(pipe.predict(X16), km.predict(reduced))
    np.testing.assert_array_equal(pipe.transform(X16), km.transform(reduced))
    np.testing.assert_array_equal(pipe[-1].cluster_centers_, km.cluster_centers_)
    assert pipe.score(X16) == km.score(reduced) == pytest.approx(-km.inertia_, rel=1e-9)
    assert adjusted_rand_score(truth, labels) == 1.0  # the four blobs are found
    assert list(pipe.get_feature_names_out()) == [f"kmeans{j}" for j in range(4)]
    assert list(pipe[0].get_feature_names_out()) == [f"pca{j}" for j in range(5)]
    pipe.set_params(kmeans__n_clusters=3).fit(X16)
    assert pipe[-1].cluster_centers_.shape == (3, 5)


def silhouette(estimator, X, y=None):
    """A scorer that needs no labels: the silhouette of the clusters in the space k-means saw."""
    return silhouette_score(estimator[:-1].transform(X), estimator.predict(X))


def test_grid_search_selects_k_by_silhouette():
    X, _ = blobs(k=4)
    pipe = Pipeline([("pca", PCA()), ("kmeans", KMeans(n_init=2, max_iter=30))])
    search = GridSearchCV(pipe, {"pca__n_components": [3, 6], "kmeans__n_clusters": [2, 3, 4, 5, 6]},
                          scoring=silhouette, cv=3).fit(X)
    assert search.best_params_["kmeans__n_clusters"] == 4
    assert isinstance(search.best_estimator_[-1], KMeans) and search.best_estimator_[-1].n_clusters == 4


def test_grid_search_with_the_estimators_own_scores():
    # KMeans.score is minus the inertia: more clusters always score higher, but the search runs on it.
    X, _ = blobs(k=4)
    search = GridSearchCV(KMeans(n_init=2, max_iter=30), {"n_clusters": [2, 4, 6]}, cv=3).fit(X)
    assert search.best_params_ == {"n_clusters": 6}
    assert (np.diff(search.cv_results_["mean_test_score"]) > 0).all()
    # PCA.score is probabilistic PCA's held-out log-likelihood: it finds the rank of signal + isotropic noise.
    rng = np.random.default_rng(1)
    low_rank = rng.standard_normal((500, 3)) * [5, 4, 3] @ np.linalg.qr(rng.standard_normal((20, 3)))[0].T
    noisy = low_rank + 0.5 * rng.standard_normal((500, 20))
    search = GridSearchCV(PCA(), {"n_components": list(range(1, 9))}, cv=5).fit(noisy)
    assert search.best_params_ == {"n_components": 3}


def test_clone_and_params():
    X, _ = blobs(n=200)
    init = X[:4].copy()
    model = KMeans(n_clusters=4, init=init, n_init=1, spherical=True, random_state=7, threads=1)
    fitted = clone(model).fit(X)
    copy = clone(fitted)
    assert not hasattr(copy, "cluster_centers_") and not hasattr(copy, "n_features_in_")
    params = copy.get_params()
    assert params["init"] is not init and np.array_equal(params["init"], init)
    assert {k: v for k, v in params.items() if k != "init"} == {k: v for k, v in model.get_params().items() if k != "init"}
    np.testing.assert_array_equal(copy.fit(X).labels_, fitted.labels_)
    assert fitted.n_features_in_ == X.shape[1]

    pca = PCA(n_components=3, whiten=True, chunk_size=50).fit(X)
    again = clone(pca)
    assert again.get_params() == {"n_components": 3, "whiten": True, "l2_normalize": False, "chunk_size": 50}
    assert not hasattr(again, "components_")
    np.testing.assert_array_equal(again.fit(X).transform(X), pca.transform(X))


def test_pca_score_is_sklearns_probabilistic_pca():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((400, 12)) @ rng.standard_normal((12, 12)) + 5
    for n_components in (3, 12):
        ours = PCA(n_components=n_components, chunk_size=64).fit(X)
        reference = SklearnPCA(n_components=n_components, svd_solver="full").fit(X)
        assert ours.noise_variance_ == pytest.approx(reference.noise_variance_, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(ours.get_covariance(), reference.get_covariance(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(ours.get_precision(), reference.get_precision(), rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(ours.score_samples(X[:50]), reference.score_samples(X[:50]), rtol=1e-8)
        assert ours.score(X) == pytest.approx(reference.score(X), rel=1e-9)
    # whiten and l2_normalize change only what transform returns, not the model of X
    assert PCA(3, whiten=True, l2_normalize=True).fit(X).score(X) == pytest.approx(PCA(3).fit(X).score(X), rel=1e-12)


def test_pca_save_load_keeps_what_score_and_transform_need(tmp_path):
    X, _ = blobs(n=300)
    pca = PCA(n_components=4).fit(X)
    pca.save(tmp_path / "pca.npz")
    loaded = PCA.load(tmp_path / "pca.npz")
    assert loaded.n_features_in_ == X.shape[1] and loaded.noise_variance_ == pca.noise_variance_
    assert loaded.score(X) == pca.score(X)
    with pytest.raises(ValueError, match="is expecting 10 features"):
        loaded.transform(X[:, :9])


def test_kmeans_transform_score_and_predict_agree():
    X, _ = blobs()
    for spherical in (False, True):
        model = KMeans(n_clusters=5, n_init=2, spherical=spherical).fit(X)
        seen = X / np.linalg.norm(X, axis=1, keepdims=True) if spherical else X
        distances = model.transform(X)
        assert distances.dtype == np.float32 and distances.shape == (len(X), 5)
        expected = np.linalg.norm(seen[:, None, :].astype(np.float64) - model.cluster_centers_[None], axis=2)
        np.testing.assert_allclose(distances, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.argmin(distances, axis=1), model.predict(X))
        np.testing.assert_array_equal(model.predict(X), model.labels_)
        assert model.score(X) == pytest.approx(-model.inertia_, rel=1e-12)
        np.testing.assert_array_equal(model.fit_transform(X), distances)


def test_errors_are_nolabel_and_sklearn_errors():
    X, _ = blobs(n=100)
    for estimator in (PCA(), KMeans()):
        with pytest.raises(SklearnNotFittedError) as caught:
            estimator.transform(X)
        assert isinstance(caught.value, NolabelError) and "not fitted" in str(caught.value)
    bad = [(KMeans(init="k-means++"), 'init must be "random"'), (KMeans(init=X[:10]), "n_init must be 1"),
           (KMeans(random_state=-1), "random_state"), (KMeans(random_state=np.random.RandomState(0)), "random_state"),
           (KMeans(n_init=0), "n_init"), (KMeans(threads=0), "threads"), (PCA(chunk_size=0), "chunk_size"),
           (PCA(n_components=2.5), "n_components")]
    for estimator, message in bad:
        with pytest.raises(NolabelValueError, match=message) as caught:
            estimator.fit(X)
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, NolabelError)
    for estimator in (PCA(), KMeans()):
        with pytest.raises(ValueError, match="sparse"):
            estimator.fit(sparse.csr_matrix(X))
    fitted = KMeans(n_clusters=3).fit(X)
    with pytest.raises(NolabelValueError, match="X has 9 features, but KMeans is expecting 10"):
        fitted.predict(X[:, :9])


def test_random_state_none_draws_a_fresh_start():
    X, _ = blobs(n=400, k=8, spread=1.0)
    runs = [KMeans(n_clusters=8, n_init=1, max_iter=3, random_state=None).fit(X).inertia_ for _ in range(4)]
    assert len(set(runs)) > 1


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from nolabel import distributed
    from nolabel.cluster import KMeans, kmeans

    starts = []
    run = kmeans._Lloyd.run
    kmeans._Lloyd.run = lambda self, centroids, max_iter: starts.append(centroids.copy()) or run(self, centroids, max_iter)
    X = np.load(sys.argv[1], mmap_mode="r")
    model = KMeans(20, n_init=2, max_iter=5, random_state=None).fit(X)
    np.savez(sys.argv[2] + f"{distributed.rank()}.npz", starts=np.stack(starts), labels=model.labels_)
""")


@pytest.mark.slow
def test_random_state_none_agrees_across_processes(tmp_path):
    # ~20 s (two torchrun processes). Every process must start from the same rows: the all-reduced
    # sums would make the processes agree after the first update anyway, but that first assignment
    # would mix different starts, a run no single process could reproduce.
    X, _ = blobs(n=5000, d=8, k=20, spread=1.0)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "fit.py").write_text(SCRIPT)
    run = run_torchrun(tmp_path / "fit.py", tmp_path / "x.npy", tmp_path / "out", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = np.load(tmp_path / "out0.npz"), np.load(tmp_path / "out1.npz")
    assert first["starts"].shape == (2, 20, 8)
    assert not np.array_equal(first["starts"][0], first["starts"][1])  # n_init draws differ
    np.testing.assert_array_equal(first["starts"], second["starts"])
    np.testing.assert_array_equal(first["labels"], second["labels"])
