"""The clustering artifact: every method writes the same folder; one reader, one `assign`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SkPCA

from nolabel import record
from nolabel.cli import main
from nolabel.cluster.pca_kmeans import cluster_stores
from nolabel.clustering import assign, load_clustering
from nolabel.config import KMeansConfig, PCAConfig, ScanConfig
from nolabel.errors import NolabelError
from nolabel.store import write_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    train = write_store(root / "train", x[:1200], y[:1200], [f"all/{i}" for i in range(1200)],
                        {"dataset": "digits", "model": "pixels"})
    held = write_store(root / "held", x[1200:], y[1200:], [f"all/{i}" for i in range(1200, len(x))],
                       {"dataset": "digits", "model": "pixels"})
    return train, held


def test_kmeans_clustering_reads_back_and_assigns_new_features_as_it_did(tmp_path, stores):
    train, held = stores
    cluster_stores(train, [held], tmp_path / "c", pca=PCAConfig(n_components=16), kmeans=KMeansConfig(n_clusters=10),
                   progress=False)
    clustering = load_clustering(tmp_path / "c")
    assert clustering.method == "PCA + k-means" and clustering.n_clusters == 10
    assert clustering.sources == ["train", "held"] and clustering.dataset("held") == "digits"
    assert clustering.store("held").fingerprint == held.fingerprint
    for name, store in (("train", train), ("held", held)):
        a = clustering.assignments[name]
        assert a.items == store.items and (a.label == store.labels).all()
        clusters, confidence = assign(clustering, store)
        np.testing.assert_array_equal(clusters, a.cluster)  # predicting its own images reproduces it
        np.testing.assert_allclose(confidence, a.confidence, atol=1e-6)
    # confidence = 1 - d1/d2 and distance = d1, against a float64 computation in the PCA space
    pca = SkPCA(16).fit(np.asarray(train.features, np.float64))
    x = pca.transform(np.asarray(held.features, np.float64))
    centroids = np.load(tmp_path / "c" / "centroids.npy").astype(np.float64)
    d = np.sqrt(((x[:, None, :] - centroids[None]) ** 2).sum(-1))
    d.sort(axis=1)
    a = clustering.assignments["held"]
    np.testing.assert_allclose(a.distance, d[:, 0], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(a.confidence, 1 - d[:, 0] / d[:, 1], atol=2e-3)
    assert ((a.confidence >= 0) & (a.confidence <= 1)).all()
    # metrics.json scores each source, the eval one under both mappings
    assert set(clustering.metrics["held"]) >= {"fit_on_eval", "fit_on_train", "cluster_sizes"}


def test_an_unfinished_or_foreign_folder_is_not_read_as_a_clustering(tmp_path, stores):
    train, _ = stores
    with pytest.raises(NolabelError, match="not a clustering folder"):
        load_clustering(tmp_path)
    cluster_stores(train, [], tmp_path / "c", kmeans=KMeansConfig(n_clusters=5), progress=False)
    record.begin(tmp_path / "c", "cluster", {"other": 1}, force=True)  # a recompute begins, then dies
    with pytest.raises(NolabelError, match="has not finished"):
        load_clustering(tmp_path / "c")


def test_scan_clustering_is_the_same_artifact_and_assigns_through_its_head(tmp_path, stores):
    from nolabel.cluster.scan import run_scan

    train, held = stores
    config = ScanConfig(n_clusters=10, n_heads=2, epochs=5, batch_size=256, lr=1e-2, n_neighbors=10, device="cpu")
    scored = run_scan(tmp_path / "scan", features=train.path, eval_features=[held.path], config=config,
                      show_progress=False)
    clustering = load_clustering(tmp_path / "scan")
    assert clustering.method == "SCAN" and clustering.sources == ["train", "held"]
    assert scored == clustering.metrics
    probabilities = np.load(tmp_path / "scan" / "probabilities.npy")
    np.testing.assert_array_equal(clustering.assignments["train"].cluster, probabilities.argmax(1))
    np.testing.assert_allclose(clustering.assignments["train"].confidence, probabilities.max(1), atol=1e-6)
    assert np.isnan(clustering.assignments["train"].distance).all()  # no centroids
    clusters, _ = assign(clustering, np.asarray(held.features))
    np.testing.assert_array_equal(clusters, clustering.assignments["held"].cluster)
    # another eval set reuses the trained heads: only the clustering is rewritten
    trained = (tmp_path / "scan" / "scan.pt").stat().st_mtime_ns
    run_scan(tmp_path / "scan", features=train.path, config=config, force=True, show_progress=False)
    assert (tmp_path / "scan" / "scan.pt").stat().st_mtime_ns == trained
    assert load_clustering(tmp_path / "scan").sources == ["train"]


def test_cli_evaluate_scores_a_clustering_folder(tmp_path, stores, capsys):
    train, held = stores
    cluster_stores(train, [held], tmp_path / "c", kmeans=KMeansConfig(n_clusters=10), progress=False)
    assert main(["evaluate", "--clustering", str(tmp_path / "c"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = load_clustering(tmp_path / "c").metrics
    for source in ("train", "held"):
        assert printed[source]["fit_on_eval"]["acc"] == pytest.approx(stored[source]["fit_on_eval"]["acc"])
    assert printed["held"]["fit_on_train"]["acc"] == pytest.approx(stored["held"]["fit_on_train"]["acc"])
    assert main(["evaluate", "--clustering", str(tmp_path / "c"), "--pred", "x.npy"]) == 2
