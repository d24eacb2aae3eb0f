"""The cluster stage (PCA -> k-means -> assign -> score), its CLI, and the sweep, on real digits pixels."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from nolabel import metrics
from nolabel.cli import main
from nolabel.config import EvaluateConfig, KMeansConfig, PCAConfig
from nolabel.errors import NolabelError
from nolabel import record
from nolabel.cluster.pca_kmeans import cluster_stores, stage_settings
from nolabel.store import write_store
from nolabel.sweep import sweep


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Digits pixels as two feature stores: the first 1200 images ("train") and the rest ("val")."""
    root = tmp_path_factory.mktemp("stores")
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    train = write_store(root / "train", x[:1200], y[:1200], [f"all/{i}" for i in range(1200)],
                        {"dataset": "digits", "model": "pixels"})
    val = write_store(root / "val", x[1200:], y[1200:], [f"all/{i}" for i in range(1200, len(x))],
                      {"dataset": "digits", "model": "pixels"})
    return train, val


def _assignments(path):
    with open(path / "assignments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r)
    return {s: (np.array([int(r["cluster"]) for r in rs]), np.array([int(r["label"]) for r in rs]),
                np.array([float(r["distance"]) for r in rs])) for s, rs in by_source.items()}


def test_cluster_stage_writes_every_file_and_scores_both_protocols(tmp_path, stores):
    train, val = stores
    out = tmp_path / "c"
    results = cluster_stores(train, [val], out, pca=PCAConfig(n_components=32), kmeans=KMeansConfig(n_clusters=10, random_state=1),
                             progress=False)
    for name in ("assignments.csv", "metrics.json", "centroids.npy", "pca.npz", "clustering.json", "record.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(results))
    assert np.load(out / "centroids.npy").shape == (10, 32)

    assigned = _assignments(out)
    train_pred, train_labels, train_dist = assigned["train"]
    val_pred, val_labels, _ = assigned["val"]
    assert len(train_pred) == 1200 and len(val_pred) == 597
    np.testing.assert_array_equal(val_labels, val.labels)
    assert (train_dist >= 0).all()
    # each protocol equals the metric computed independently from the written assignments
    assert results["val"]["fit_on_eval"]["acc"] == pytest.approx(metrics.accuracy(val_labels, val_pred))
    assert results["val"]["fit_on_train"]["acc"] == pytest.approx(
        metrics.accuracy(val_labels, val_pred, fit=(train_labels, train_pred)))
    assert "fit_on_train" not in results["train"]
    assert results["train"]["fit_on_eval"]["nmi"] == pytest.approx(metrics.nmi(train_labels, train_pred))
    # digits pixels cluster far above chance (k-means on raw digits: ACC ~0.7-0.8)
    assert results["val"]["fit_on_train"]["acc"] > 0.6
    assert sum(results["train"]["cluster_sizes"]) == 1200


def test_cluster_stage_is_kept_for_the_same_inputs_and_refused_for_others(tmp_path, stores):
    train, val = stores
    pca, km, ev = PCAConfig(n_components=8), KMeansConfig(n_clusters=5), EvaluateConfig()
    first = cluster_stores(train, [val], tmp_path / "c", pca=pca, kmeans=km, evaluate=ev, progress=False)
    assert record.is_done(tmp_path / "c", stage_settings([train, val], pca, km, ev))
    assert not record.is_done(tmp_path / "c", stage_settings([train, val], pca, KMeansConfig(n_clusters=6), ev))
    written = (tmp_path / "c" / "assignments.csv").stat().st_mtime_ns
    assert cluster_stores(train, [val], tmp_path / "c", pca=pca, kmeans=km, evaluate=ev, progress=False) == first
    assert (tmp_path / "c" / "assignments.csv").stat().st_mtime_ns == written  # kept, not recomputed
    with pytest.raises(NolabelError, match=r"kmeans\.n_clusters differ.*--force"):
        cluster_stores(train, [val], tmp_path / "c", pca=pca, kmeans=KMeansConfig(n_clusters=6), progress=False)
    # other features with the same settings (here: the train rows in reverse order) are other inputs too
    flipped = write_store(tmp_path / "flipped", np.asarray(train.features)[::-1], train.labels[::-1], train.items[::-1],
                          {"dataset": "digits", "model": "pixels"})
    with pytest.raises(NolabelError, match=r"inputs\.0\.features differ"):
        cluster_stores(flipped, [val], tmp_path / "c", pca=pca, kmeans=km, evaluate=ev, progress=False)
    cluster_stores(train, [val], tmp_path / "c", pca=PCAConfig(enabled=False), kmeans=km, evaluate=ev, force=True,
                   progress=False)
    assert not (tmp_path / "c" / "pca.npz").exists()  # the replaced clustering's PCA is gone with it


def test_cluster_stage_input_errors(tmp_path, stores):
    train, _ = stores
    with pytest.raises(NolabelError, match="k = 5000"):
        cluster_stores(train, [], tmp_path / "c", kmeans=KMeansConfig(n_clusters=5000), progress=False)
    other = write_store(tmp_path / "other", np.zeros((5, 3), np.float32), np.zeros(5), ["a"] * 5, {})
    with pytest.raises(NolabelError, match="dimensions"):
        cluster_stores(train, [other], tmp_path / "c2", progress=False)


def test_unlabelled_store_is_assigned_but_not_scored(tmp_path, stores):
    train, val = stores
    unlabelled = write_store(tmp_path / "u", np.asarray(val.features), -np.ones(val.n), val.items, {})
    results = cluster_stores(train, [unlabelled], tmp_path / "c", pca=PCAConfig(n_components=16),
                             kmeans=KMeansConfig(n_clusters=10), progress=False)
    assert results["u"]["n_labelled"] == 0 and "fit_on_eval" not in results["u"]
    assert len(_assignments(tmp_path / "c")["u"][0]) == val.n


def test_cli_cluster_prints_table_and_rejects_bad_input(tmp_path, stores, capsys):
    train, val = stores
    out = tmp_path / "c"
    assert main(["cluster", "--features", str(train.path), "--eval-features", str(val.path), "--k", "10",
                 "--pca", "16", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "fit_on_train" in table and "val" in table
    assert main(["cluster", "--features", str(tmp_path / "missing"), "--k", "3", "--out", str(out)]) == 2
    assert "no such feature folder" in capsys.readouterr().err
    assert main(["cluster", "--features", str(train.path), "--k", "10", "--out", str(out)]) == 2


def test_sweep_writes_rows_and_plots_and_resumes(tmp_path, stores):
    train, val = stores
    path = sweep(train, [val], tmp_path / "s", pca_dims=[4, 16], ks=[10, 20], seeds=2, progress=False)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 dims x 2 k x 2 seeds x (train + val under two protocols)
    assert len(rows) == 2 * 2 * 2 * 3
    assert {r["protocol"] for r in rows if r["source"] == "val"} == {"fit_on_eval", "fit_on_train"}
    for name in ("sweep_acc_vs_pca.png", "sweep_acc_vs_k.png", "sweep_ari_vs_pca.png", "sweep_ari_vs_k.png"):
        assert (tmp_path / "s" / name).stat().st_size > 1000
    before = path.read_text()
    sweep(train, [val], tmp_path / "s", pca_dims=[4, 16], ks=[10, 20], seeds=2, progress=False)
    assert path.read_text() == before  # nothing recomputed
    # a row is not reused under other settings: they are refused, or (force) start the sweep over
    with pytest.raises(NolabelError, match=r"max_iter differ.*--force"):
        sweep(train, [val], tmp_path / "s", pca_dims=[4], ks=[10], seeds=1, max_iter=3, progress=False)
    assert path.read_text() == before
    sweep(train, [val], tmp_path / "s", pca_dims=[4], ks=[10], seeds=1, max_iter=3, force=True, progress=False)
    with open(path, newline="") as f:
        redone = list(csv.DictReader(f))
    assert len(redone) == 3 and {(r["pca"], r["k"], r["seed"]) for r in redone} == {("4", "10", "0")}
    assert [r["acc"] for r in redone] != [r["acc"] for r in rows if (r["pca"], r["k"], r["seed"]) == ("4", "10", "0")]


def test_principal_components_are_nested_so_a_sweep_may_slice_one_projection(stores):
    from nolabel.cluster import PCA

    train, _ = stores
    full = PCA(n_components=32).fit(train.features).transform(train.features)
    small = PCA(n_components=8).fit(train.features).transform(train.features)
    np.testing.assert_allclose(full[:, :8], small, rtol=1e-4, atol=1e-3)


def test_objectnet_is_scored_through_the_imagenet_correspondence(tmp_path):
    from data_fixtures import write_objectnet

    from nolabel.data import load

    # ObjectNet: 4 alarm clocks, 3 bananas, 2 squeegees (no ImageNet counterpart)
    folders = {"alarm_clock": "Alarm clock", "banana": "Banana", "squeegee": "Squeegee"}
    counts = {"alarm_clock": 4, "banana": 3, "squeegee": 2}
    rng = np.random.default_rng(0)
    pictures = {f: [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(n)] for f, n in counts.items()}
    names_2012 = [f"class {j}" for j in range(1000)]
    names_2012[10], names_2012[11], names_2012[12] = "analog clock", "digital clock", "banana"
    write_objectnet(tmp_path / "on", folders, pictures, {"Alarm clock": "analog clock; digital clock",
                                                         "Banana": "banana"}, list(range(1000)), names_2012)
    spec = f"objectnet:{tmp_path / 'on'}"
    ds = load(spec)
    assert ds.imagenet_class_indices == {0: [10, 11], 1: [12]}

    # ImageNet train: three tight blobs labelled 11 (a clock), 12 (banana) and 500 (other)
    centres = np.array([[10, 0, 0], [0, 10, 0], [0, 0, 10]], np.float32)
    train_x = np.concatenate([c + rng.normal(0, 0.1, (30, 3)) for c in centres]).astype(np.float32)
    train_y = np.repeat([11, 12, 500], 30)
    train = write_store(tmp_path / "train", train_x, train_y, [str(i) for i in range(90)], {"dataset": "imagenet"})
    # clocks land in the clock blob (right), bananas in the "other" blob (wrong), squeegees anywhere
    blob_of = {0: 0, 1: 2, 2: 1}
    on_x = np.stack([centres[blob_of[int(y)]] for y in ds.labels]).astype(np.float32)
    on = write_store(tmp_path / "objectnet", on_x, ds.labels, ds.item_names, {"dataset": spec})
    results = cluster_stores(train, [on], tmp_path / "c", pca=PCAConfig(enabled=False), kmeans=KMeansConfig(n_clusters=3),
                             progress=False)
    scored = results["objectnet"]["objectnet"]
    assert scored["n_scored"] == 7 and scored["n_classes_scored"] == 2
    assert scored["accuracy_overlapping_classes"] == pytest.approx(4 / 7)
