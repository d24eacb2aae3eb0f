"""The configuration and the main job `nolabel run`, end to end on scikit-learn's digits."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nolabel.cli import main
from nolabel.config import RunConfig, dump_config, load_config
from nolabel.errors import NolabelError
from nolabel.io import read_json
from nolabel.pipeline import format_summary, run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_config_defaults_yaml_and_overrides(tmp_path):
    assert load_config() == RunConfig()
    path = tmp_path / "c.yaml"
    path.write_text("name: mine\nkmeans: {n_clusters: 20, spherical: true}\ndata: {train: digits, eval: [a, b]}\n")
    cfg = load_config(path, ["kmeans.n_clusters=30", "pca.n_components=null", "model.weights=/x/y.pt"])
    assert (cfg.name, cfg.kmeans.n_clusters, cfg.kmeans.spherical, cfg.pca.n_components) == ("mine", 30, True, None)
    assert cfg.data.eval == ["a", "b"] and cfg.model.weights == "/x/y.pt"
    # Defaults, then the file, then each --set in order: of two overrides of a key the last wins, the
    # file's other keys in that section stay, and what neither the file nor --set names keeps its default.
    twice = load_config(path, ["kmeans.n_clusters=30", "kmeans.random_state=4", "kmeans.n_clusters=7"])
    assert (twice.kmeans.n_clusters, twice.kmeans.random_state, twice.kmeans.spherical) == (7, 4, True)
    assert (twice.kmeans.n_init, twice.kmeans.max_iter) == (RunConfig().kmeans.n_init, RunConfig().kmeans.max_iter)
    assert (twice.name, twice.data.train, twice.data.eval, twice.data.on_bad_image) == ("mine", "digits", ["a", "b"],
                                                                                         "skip")
    assert twice.pca == RunConfig().pca and twice.extract == RunConfig().extract and twice.scan is None
    from dataclasses import replace
    assert load_config(None, ["kmeans.n_clusters=7"]) == replace(RunConfig(), kmeans=replace(RunConfig().kmeans, n_clusters=7))
    # the dumped YAML loads back to the same configuration
    dumped = tmp_path / "d.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config(dumped) == cfg


@pytest.mark.parametrize("override, message", [
    ("kmeans.kk=3", "unknown key"),
    ("kmeans.n_clusters=ten", "expected int"),
    ("kmeans.n_clusters=0", "at least 1"),
    ("kmeans.k=10", "kmeans: k is now n_clusters"),
    ("scan.mine_neighbors=5", "mine_neighbors is now n_neighbors"),
    ("extract.dtype=int8", "not one of"),
    ("evaluate.mapping=best", "not one of"),
    ("kmeans=3", "expected a mapping"),
    ("k", "key=value"),
    ("name=../up", "folder name"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(NolabelError, match=message):
        load_config(None, [override])


def test_config_file_errors(tmp_path):
    with pytest.raises(NolabelError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("kmeans: [1, 2")
    with pytest.raises(NolabelError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_configs_are_valid():
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert configs, "configs/ should ship presets"
    for path in configs:
        cfg = load_config(path)
        assert cfg.name, path
        text = path.read_text()
        assert text.lstrip().startswith("#"), f"{path.name} should say what data and weights it needs"


def _digits_config(**over):
    overrides = ["name=t", "data.train=digits", "extract.image_size=32", "extract.batch_size=256",
                 "pca.n_components=32", "baseline.image_size=8", "report=false"]
    overrides += [f"{k}={v}" for k, v in over.items()]
    return load_config(None, overrides)


def test_run_end_to_end_then_resume_then_change_one_stage(tmp_path):
    out = tmp_path / "run"
    logs: list[str] = []
    summary = run(_digits_config(), out, progress=False, log=logs.append)
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    methods = [r["method"] for r in summary["rows"]]
    assert methods[0].startswith("efficientnet_lite0") and methods[1].startswith("raw pixels")
    for row in summary["rows"]:
        m = row["sources"][0]["metrics"]
        assert 0.3 < m["acc"] <= 1 and 0.2 < m["nmi"] <= 1
    for path in ("config.yaml", "features/digits/manifest.json", "cluster/assignments.csv", "cluster/metrics.json",
                 "cluster/centroids.npy", "cluster/pca.npz", "cluster/clustering.json", "baseline/cluster/metrics.json"):
        assert (out / path).exists(), path
    table = format_summary(summary)
    assert "raw pixels" in table and "ACC" in table

    features_mtime = (out / "features/digits/features.npy").stat().st_mtime_ns
    logs.clear()
    again = run(_digits_config(), out, progress=False, log=logs.append)
    assert sum("up to date" in line for line in logs) == 4  # both extractions, both clusterings
    assert again["rows"] == summary["rows"]
    # A folder written before a key existed (here: kmeans.random_state, at its default) is the same configuration.
    stored = yaml.safe_load((out / "config.yaml").read_text())
    del stored["kmeans"]["random_state"]
    (out / "config.yaml").write_text(yaml.safe_dump(stored))
    logs.clear()
    run(_digits_config(), out, progress=False, log=logs.append)
    assert sum("up to date" in line for line in logs) == 4

    with pytest.raises(NolabelError, match="another configuration"):
        run(_digits_config(**{"kmeans.n_clusters": 12}), out, progress=False, log=logs.append)
    logs.clear()
    changed = run(_digits_config(**{"kmeans.n_clusters": 12}), out, force=True, progress=False, log=logs.append)
    assert (out / "features/digits/features.npy").stat().st_mtime_ns == features_mtime
    assert sum("up to date" in line for line in logs) == 2  # features reused, clusterings redone
    assert json.loads((out / "cluster/metrics.json").read_text())["_clustering"]["n_clusters"] == 12
    assert yaml.safe_load((out / "config.yaml").read_text())["kmeans"]["n_clusters"] == 12
    assert changed["rows"][0]["sources"][0]["metrics"] != summary["rows"][0]["sources"][0]["metrics"]


def test_cli_run_prints_config_and_rejects_bad_overrides(tmp_path, capsys):
    assert main(["run", "--set", "data.train=digits", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["train"] == "digits"
    assert main(["run", "--set", "kmeans.n_clusters=-1", "--out", str(tmp_path / "r")]) == 2
    assert "kmeans.n_clusters" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_run_with_deepcluster_extracts_with_the_weights_it_trained(tmp_path):
    from nolabel.io import sha256_file
    from nolabel.store import FeatureStore

    overrides = ["name=dc", "data.train=digits", "model.name=cnn28", "extract.image_size=28", "pca.n_components=16",
                 "baseline.enabled=false", "report=false", "deepcluster.epochs=1", "deepcluster.n_clusters=20",
                 "deepcluster.batch_size=64", "deepcluster.pca_dim=16"]
    logs: list[str] = []
    summary = run(load_config(None, overrides), tmp_path / "r", progress=False, log=logs.append)
    checkpoint = tmp_path / "r" / "deepcluster" / "backbone.pt"
    assert checkpoint.exists() and (tmp_path / "r" / "deepcluster" / "history.json").exists()
    manifest = FeatureStore.open(tmp_path / "r" / "features" / "digits").manifest
    assert manifest["weights_sha256"] == sha256_file(checkpoint)
    assert summary["rows"][0]["method"] == "cnn28 (DeepCluster) + PCA + k-means"
    assert summary["rows"][0]["sources"][0]["metrics"]["acc"] > 0.2
    logs.clear()
    run(load_config(None, overrides), tmp_path / "r", progress=False, log=logs.append)
    assert [line for line in logs if "up to date" in line] == [
        "deepcluster: up to date", "features digits: up to date", "cluster: up to date"]


def test_run_with_simclr_scan_and_selflabel_adds_a_row_per_stage(tmp_path):
    import numpy as np

    from data_fixtures import write_mnist_folder
    from nolabel.cluster.scan import predict_scan
    from nolabel.clustering import assign, load_clustering
    from nolabel.data import load
    from nolabel.metrics import evaluate
    from nolabel.store import FeatureStore

    digits = load("digits")  # split into an MNIST-layout folder: SCAN trains on one part, scores both
    write_mnist_folder(tmp_path / "mnist", {"train": (digits.images[:1200], digits.labels[:1200]),
                                            "t10k": (digits.images[1200:], digits.labels[1200:])}, gz=False)
    train_spec, test_spec = f"mnist:{tmp_path / 'mnist'}:train", f"mnist:{tmp_path / 'mnist'}:test"
    overrides = ["name=scan", f"data.train={train_spec}", f"data.eval=[{test_spec}]", "model.name=cnn28", "extract.image_size=16", "pca.n_components=16",
                 "baseline.enabled=false", "report=false",
                 "pretrain.epochs=1", "pretrain.batch_size=128", "pretrain.image_size=16", "pretrain.monitor_size=200",
                 "pretrain.monitor_bank=500",
                 "scan.epochs=2", "scan.n_heads=2", "scan.batch_size=128", "scan.lr=0.001", "scan.weak_views=1",
                 "scan.strong_views=1", "scan.n_neighbors=5", "scan.pca=32",
                 "selflabel.epochs=1", "selflabel.batch_size=128", "selflabel.strong_views=2", "selflabel.threshold=0.5"]
    logs: list[str] = []
    summary = run(load_config(None, overrides), tmp_path / "r", progress=False, log=logs.append)
    methods = [row["method"] for row in summary["rows"]]
    assert methods == ["cnn28 (SimCLR) + PCA + k-means", "cnn28 (SimCLR) + SCAN",
                       "cnn28 (SimCLR) + SCAN + self-labeling"]
    test_name = summary["rows"][0]["sources"][1]["name"]  # the test features' folder name
    assert test_name.endswith("mnist_test")
    for row in summary["rows"]:
        assert [(source["name"], source["n"]) for source in row["sources"]] == [("train", 1200), (test_name, 597)]
        for source in row["sources"]:
            assert 0.1 < source["metrics"]["acc"] <= 1
    for path in ("pretrain/backbone.pt", "scan/predictions.npy", "scan/neighbors.npy", "selflabel/predictions.npy"):
        assert (tmp_path / "r" / path).exists(), path
    # The held-out rows: the kept head (and its self-labeled version) on the test features, scored there.
    test_store = tmp_path / "r" / "features" / test_name
    for stage, extra in (("scan", {}), ("selflabel", {"selflabel_dir": tmp_path / "r" / "selflabel"})):
        clustering = load_clustering(tmp_path / "r" / stage)
        pred = clustering.assignments[test_name].cluster
        np.testing.assert_array_equal(pred, predict_scan(tmp_path / "r" / "scan", features=test_store, **extra).argmax(1))
        np.testing.assert_array_equal(pred, assign(clustering, FeatureStore.open(test_store))[0])
        row = next(r for r in summary["rows"] if r["folder"].endswith(stage))
        assert row["sources"][1]["metrics"]["acc"] == pytest.approx(evaluate(digits.labels[1200:], pred)["acc"])
    # SCAN samples one weak and the first strong view; the strong views are written once for both stages.
    scan_json = read_json(tmp_path / "r" / "scan" / "scan.json")
    assert scan_json["augmented_views"] == 2 and scan_json["pca_components"] == 32
    assert (tmp_path / "r" / "scan" / "pca.npz").exists()  # self-labeling's heads take the same 32-d inputs
    assert sorted(p.name for p in (tmp_path / "r" / "views_strong").iterdir()) == ["view0", "view1"]
    logs.clear()
    again = run(load_config(None, overrides), tmp_path / "r", progress=False, log=logs.append)
    assert [line for line in logs if "up to date" in line] == [
        "pretrain: up to date", f"features {train_spec}: up to date", f"features {test_spec}: up to date",
        "cluster: up to date", "views weak: up to date", "views strong: up to date", "scan: up to date",
        "selflabel: up to date"]
    assert again["rows"] == summary["rows"]
    # The run's primary clustering is its last stage, self-labeling; the report offers every clustering.
    from nolabel.report import write_report
    from nolabel.report.collect import read_run

    assert summary["primary"] == str(tmp_path / "r" / "selflabel")
    assert read_run(tmp_path / "r").main.method == "cnn28 (SimCLR) + SCAN + self-labeling"
    html = write_report(tmp_path / "r", progress=False).read_text(encoding="utf-8")
    assert '<option value="2" selected>cnn28 (SimCLR) + SCAN + self-labeling</option>' in html
    assert '<option value="0">cnn28 (SimCLR) + PCA + k-means</option>' in html


def test_run_config_rejects_contradictory_stages():
    with pytest.raises(NolabelError, match="keep one"):
        load_config(None, ["pretrain.epochs=1", "deepcluster.epochs=1"])
    with pytest.raises(NolabelError, match="add a scan or turtle section"):
        load_config(None, ["selflabel.epochs=1"])
    with pytest.raises(NolabelError, match="scan.mode"):
        load_config(None, ["scan.mode=magic"])
    with pytest.raises(NolabelError, match="scan.weak_views: must be at least 0, got -1"):
        load_config(None, ["scan.weak_views=-1"])
    with pytest.raises(NolabelError, match="selflabel.strong_views: must be at least 0, got -1"):
        load_config(None, ["scan.epochs=1", "selflabel.strong_views=-1"])
    with pytest.raises(NolabelError, match="scan.pca: must be at least 1, got 0"):
        load_config(None, ["scan.pca=0"])
    with pytest.raises(NolabelError, match="scan.pca applies to features mode only"):
        load_config(None, ["scan.mode=network", "scan.pca=64"])
    # A configuration written before the key was split names the keys that replace it.
    with pytest.raises(NolabelError, match="unknown key.*augmented_views.*strong_views.*weak_views"):
        load_config(None, ["scan.augmented_views=2"])


def test_a_changed_upstream_setting_reruns_everything_downstream(tmp_path):
    from nolabel import record

    out = tmp_path / "run"
    first = run(_digits_config(**{"extract.image_size": 32}), out, progress=False, log=lambda line: None)
    fingerprints = {stage: record.read(out / stage)["fingerprint"] for stage in ("features/digits", "cluster")}
    logs: list[str] = []
    second = run(_digits_config(**{"extract.image_size": 16}), out, force=True, progress=False, log=logs.append)
    # the features changed, so the clustering made from them is redone and scored again ...
    assert [line for line in logs if "up to date" in line] == [
        "baseline features digits: up to date", "baseline cluster: up to date"]
    for stage, before in fingerprints.items():
        assert record.read(out / stage)["fingerprint"] != before, stage
    assert json.loads((out / "cluster" / "clustering.json").read_text())["settings"]["inputs"][0]["features"] == \
        record.read(out / "features/digits")["fingerprint"]
    assert second["rows"][0]["sources"][0]["metrics"] != first["rows"][0]["sources"][0]["metrics"]
    # ... and the row reported is the one this configuration produced
    assert second["rows"][0]["sources"][0]["metrics"] == run(
        _digits_config(**{"extract.image_size": 16}), tmp_path / "fresh", progress=False,
        log=lambda line: None)["rows"][0]["sources"][0]["metrics"]
