"""The main job: one configuration, end to end, stage by stage, into one run folder.

    RUN/config.yaml             the resolved configuration
    RUN/features/<dataset>/     one feature store per dataset (nolabel extract)
    RUN/cluster/                PCA + k-means + assignments + metrics (nolabel cluster)
    RUN/baseline/...            the same clustering on raw pixels, as a reference row
    RUN/summary.json            the results table

Each stage records the settings that produced it and is skipped when its finished output matches,
so a killed run resumes where it stopped, and a changed setting recomputes only what depends on it.
A folder made by a different configuration is never overwritten without `force`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline, store
from .config import PCAConfig, RunConfig, dump_config, load_config
from .errors import NolabelError
from .features import ExtractOptions, extract
from .io import sha256_file, slug, write_json, write_text

SUMMARY_METRICS = ("acc", "nmi", "ari", "ami")


def default_data() -> str:
    """Fashion-MNIST when its files are here (make install puts them there), else sklearn's digits."""
    from .data import load

    try:
        load("fashion-mnist")
        return "fashion-mnist"
    except NolabelError:
        return "digits"


def run(cfg: RunConfig, out: str | os.PathLike | None = None, *, force: bool = False,
        progress: bool = True, log=print) -> dict[str, Any]:
    """Run `cfg` into `out` (default runs/<name>); return the summary written to summary.json."""
    out = Path(out) if out is not None else Path("runs") / cfg.name
    _claim_folder(out, cfg, force)
    timings: dict[str, float] = {}

    log(f"run folder: {out}")
    specs = [cfg.data.train, *cfg.data.eval]
    weights, trained_by = cfg.model.weights, ""
    if cfg.deepcluster is not None:
        weights, trained_by = _deepcluster_stage(cfg, out / "deepcluster", timings, progress, log), " (DeepCluster)"
    if cfg.pretrain is not None:
        weights, trained_by = _pretrain_stage(cfg, out / "pretrain", timings, progress, log), " (SimCLR)"
    stores = _extract_all(cfg, out / "features", specs, cfg.model.name, weights, cfg.extract.image_size,
                          timings, "features", progress, log)
    rows = [_cluster_stage(cfg, stores, out / "cluster", cfg.pca, timings, "cluster", progress, log,
                           f"{cfg.model.name}{trained_by} + PCA + k-means")]
    if cfg.scan is not None:
        rows.extend(_scan_stages(cfg, out, stores, weights, timings, progress, log))
    if cfg.baseline.enabled:
        pixel_stores = _extract_all(cfg, out / "baseline" / "features", specs, "pixels", None,
                                    cfg.baseline.image_size, timings, "baseline features", progress, log)
        rows.append(_cluster_stage(cfg, pixel_stores, out / "baseline" / "cluster", cfg.pca, timings,
                                   "baseline cluster", progress, log, "raw pixels + PCA + k-means"))

    summary = {"name": cfg.name, "folder": str(out), "rows": rows,
               "timings_seconds": {k: round(v, 2) for k, v in timings.items()}}
    write_json(out / "summary.json", summary)
    if cfg.report:
        from .report import write_report

        summary["report"] = str(write_report(out))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The results table: one row per method and dataset, ACC / NMI / ARI / AMI."""
    header = f"{'method':<42} {'data':<24} {'n':>7} " + " ".join(f"{m.upper():>6}" for m in SUMMARY_METRICS)
    lines = [header, "-" * len(header)]
    for row in summary["rows"]:
        for source in row["sources"]:
            values = source.get("metrics")
            cells = " ".join(f"{values[m]:6.3f}" if values else f"{'-':>6}" for m in SUMMARY_METRICS)
            lines.append(f"{row['method']:<42} {source['data'][:24]:<24} {source['n']:>7} {cells}")
    protocol = summary["rows"][0].get("protocol")
    if protocol:
        lines.append(f"protocol: {protocol}")
    return "\n".join(lines)


def _claim_folder(out: Path, cfg: RunConfig, force: bool) -> None:
    config_file = out / "config.yaml"
    text = dump_config(cfg)
    if config_file.exists() and not force and not _same_config(config_file, cfg):
        raise NolabelError(
            f"{out} holds a run made with another configuration; choose another folder with --out, "
            "or pass --force to recompute the stages whose settings changed"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_text(config_file, text)


def _same_config(path: Path, cfg: RunConfig) -> bool:
    """Whether the run folder's config.yaml means `cfg`: compared as loaded, so a key that a newer
    nolabel added with its default does not make an older folder "another configuration"."""
    try:
        return load_config(path) == cfg
    except NolabelError:  # a key this version no longer knows: a different configuration
        return False


def _deepcluster_stage(cfg: RunConfig, folder: Path, timings: dict, progress: bool, log) -> str:
    """Train cfg.model.name with DeepCluster on the train images; return the backbone checkpoint.

    Resumes from its own per-epoch state; a finished training returns at once."""
    from .cluster.deepcluster import train_deepcluster
    from .data import load

    t = time.perf_counter()
    dataset = load(cfg.data.train, on_bad_image=cfg.data.on_bad_image)
    if not hasattr(dataset, "images"):
        raise NolabelError(f"{cfg.data.train}: DeepCluster trains on images held in memory (Fashion-MNIST, "
                           "MNIST, digits, CIFAR, STL-10); this dataset is a folder of files")
    log(f"deepcluster: {cfg.deepcluster.version} on {cfg.data.train}, {cfg.deepcluster.epochs} epochs")
    result = train_deepcluster(dataset.images, folder, replace(cfg.deepcluster, model=cfg.model.name),
                               labels=dataset.labels, show_progress=progress)
    timings["deepcluster"] = time.perf_counter() - t
    return str(result.checkpoint)


def _pretrain_stage(cfg: RunConfig, folder: Path, timings: dict, progress: bool, log) -> str:
    """Train cfg.model.name with SimCLR on the train images (resuming); return the backbone checkpoint."""
    from .pretrain.simclr import SimCLRConfig, pretrain_simclr

    t = time.perf_counter()
    log(f"pretrain: SimCLR {cfg.model.name} on {cfg.data.train}, {cfg.pretrain.epochs} epochs")
    library = SimCLRConfig(**{f.name: getattr(cfg.pretrain, f.name) for f in fields(SimCLRConfig)})
    result = pretrain_simclr(cfg.data.train, folder, replace(library, model=cfg.model.name), show_progress=progress)
    timings["pretrain"] = time.perf_counter() - t
    return str(result.checkpoint)


def _scan_stages(cfg: RunConfig, out: Path, stores: list[store.FeatureStore], weights: str | None, timings: dict,
                 progress: bool, log) -> list[dict[str, Any]]:
    """SCAN (+ self-labeling) trained on the train set; one results row each, scoring the train set
    and every eval set (assigned by the trained head)."""
    from .cluster.scan import run_scan, write_augmented_views
    from .cluster.selflabel import run_selflabel

    train = stores[0]
    scan, network = cfg.scan, cfg.scan.mode == "network"
    bf16 = cfg.extract.precision == "bf16"
    image_size = cfg.extract.image_size
    inputs = ({"data": cfg.data.train, "model": cfg.model.name, "weights": weights, "image_size": image_size}
              if network else {"features": str(train.path)})
    source = {"features": train.manifest.get("weights_sha256"), "n": train.n, "dim": train.dim}
    rows = []

    def views(kind: str, count: int) -> list[Path]:
        """The first `count` stored views of `kind`; the strong ones are written once, as many as the
        stage that samples most of them needs."""
        if network or count == 0:
            return []
        stored = count if kind == "weak" else max(scan.strong_views, cfg.selflabel.strong_views if cfg.selflabel else 0)
        return write_augmented_views(cfg.data.train, cfg.model.name, out / f"views_{kind}", kind=kind,
                                     n_views=stored, weights=weights, image_size=image_size, bf16=bf16,
                                     seed=scan.seed, show_progress=progress)[:count]

    t = time.perf_counter()
    settings = {"scan": asdict(scan), "inputs": source}
    if _stage_done(out / "scan", settings):
        log("scan: up to date")
    else:
        augmented = views("weak", scan.weak_views) + views("strong", scan.strong_views)
        log(f"scan: {scan.n_heads} heads, K = {scan.n_clusters}, {scan.mode} mode")
        run_scan(out / "scan", **inputs, augmented=augmented, num_neighbors=scan.mine_neighbors,
                 pca_components=scan.pca, config=scan.library_config(), force=True, show_progress=progress)
        _stage_finished(out / "scan", settings)
    timings["scan"] = time.perf_counter() - t
    rows.append(_predictions_row(f"{cfg.model.name}{' (SimCLR)' if cfg.pretrain else ''} + SCAN", out / "scan",
                                 stores, cfg))

    if cfg.selflabel is not None:
        t = time.perf_counter()
        settings = {"selflabel": asdict(cfg.selflabel), "scan": settings}
        if _stage_done(out / "selflabel", settings):
            log("selflabel: up to date")
        else:
            augmented = views("strong", cfg.selflabel.strong_views)
            log(f"selflabel: confidence > {cfg.selflabel.threshold}")
            inputs_sl = ({"data": cfg.data.train, "model": cfg.model.name, "image_size": image_size}
                         if network else {"features": str(train.path)})
            run_selflabel(out / "scan", out / "selflabel", **inputs_sl, augmented=augmented,
                          config=cfg.selflabel.library_config(), force=True, show_progress=progress)
            _stage_finished(out / "selflabel", settings)
        timings["selflabel"] = time.perf_counter() - t
        rows.append(_predictions_row(rows[-1]["method"] + " + self-labeling", out / "selflabel", stores, cfg,
                                     scan_dir=out / "scan"))
    return rows


STAGE_JSON = "stage.json"


def _stage_done(folder: Path, settings: dict[str, Any]) -> bool:
    from .io import read_json

    return (folder / STAGE_JSON).exists() and read_json(folder / STAGE_JSON) == json.loads(json.dumps(settings))


def _stage_finished(folder: Path, settings: dict[str, Any]) -> None:
    write_json(folder / STAGE_JSON, settings)


def _predictions_row(method: str, folder: Path, stores: list[store.FeatureStore], cfg: RunConfig,
                     scan_dir: Path | None = None) -> dict[str, Any]:
    """A results row for a SCAN stage (`folder` = scan_dir) or a self-labeling one (`folder`, made from
    `scan_dir`): the train set from the stage's predictions.npy, each eval set assigned by its head
    (written to predictions_<name>.npy). Each set's cluster -> class mapping is fitted on that set."""
    from . import metrics
    from .cluster.scan import predict_scan
    from .io import save_npy

    def score(pred: np.ndarray, labels: np.ndarray) -> dict[str, float] | None:
        known = labels >= 0
        if not known.any():
            return None
        scored = metrics.evaluate(pred[known], labels[known], method=cfg.evaluate.mapping,
                                  average_method=cfg.evaluate.average_method)
        return {m: scored[m] for m in SUMMARY_METRICS}

    network = cfg.scan.mode == "network"
    names = pipeline._source_names(stores)
    sources = []
    for i, (name, s) in enumerate(zip(names, stores)):
        if i == 0:
            pred = np.load(folder / "predictions.npy")
        else:
            spec = cfg.data.eval[i - 1]
            pred = predict_scan(scan_dir or folder, features=None if network else s.path, data=spec if network else None,
                                image_size=cfg.extract.image_size, selflabel_dir=folder if scan_dir else None,
                                device=cfg.scan.device).argmax(1)
            if len(pred) != s.n:
                raise NolabelError(f"{spec}: {len(pred)} images predicted for {s.n} feature rows")
            save_npy(folder / f"predictions_{name}.npy", pred.astype(np.int64))
        sources.append({"name": name, "data": s.manifest.get("dataset"), "n": int(len(pred)),
                        "metrics": score(pred, s.labels), "metrics_fit_on_train": None})
    return {"method": method, "folder": str(folder), "protocol": None, "sources": sources}



def _extract_all(cfg: RunConfig, root: Path, specs: list[str], model: str, weights: str | None,
                 image_size: int | None, timings: dict, label: str, progress: bool, log) -> list[store.FeatureStore]:
    t = time.perf_counter()
    options = ExtractOptions(batch_size=cfg.extract.batch_size, image_size=image_size,
                             device=cfg.extract.device, dtype=cfg.extract.dtype,
                             precision=cfg.extract.precision, workers=cfg.extract.workers,
                             on_bad_image=cfg.data.on_bad_image)
    stores = []
    for spec in specs:
        folder = root / slug(spec)
        existing = _matching_store(folder, spec, model, weights, options)
        if existing is not None:
            log(f"{label}: {spec}: up to date ({existing.n} x {existing.dim})")
            stores.append(existing)
            continue
        log(f"{label}: {spec} through {model}")
        stores.append(extract(spec, model, folder, weights=weights, allow_pickle=cfg.model.trust_checkpoint,
                              download=cfg.model.download and model == cfg.model.name, options=options,
                              force=True, progress=progress))
    timings[label] = time.perf_counter() - t
    return stores


def _matching_store(folder: Path, spec: str, model: str, weights: str | None,
                    options: ExtractOptions) -> store.FeatureStore | None:
    if not store.is_complete(folder):
        return None
    existing = store.FeatureStore.open(folder)
    m = existing.manifest
    wanted = {"dataset": spec, "model": model, "dtype": options.dtype, "precision": options.precision,
              "batch_size": options.batch_size}
    if weights is not None and Path(weights).is_file():
        wanted["weights_sha256"] = sha256_file(weights)
    if any(m.get(k) != v for k, v in wanted.items()):
        return None
    if options.image_size is not None and m.get("transform", {}).get("image_size") != options.image_size:
        return None
    return existing


def _cluster_stage(cfg: RunConfig, stores, folder: Path, pca: PCAConfig, timings, label, progress, log,
                   method: str) -> dict[str, Any]:
    t = time.perf_counter()
    pca = _fit_pca_to(pca, stores[0])
    settings = pipeline.stage_settings(stores, pca, cfg.kmeans, cfg.evaluate)
    if pipeline.is_done(folder, settings):
        log(f"{label}: up to date")
        from .io import read_json

        results = read_json(folder / "metrics.json")
    else:
        log(f"{label}: PCA {pca.n_components if pca.enabled else 'off'} + k-means k={cfg.kmeans.k}")
        results = pipeline.cluster_stores(stores[0], stores[1:], folder, pca=pca, kmeans=cfg.kmeans,
                                          evaluate=cfg.evaluate, force=True, progress=progress)
    timings[label] = time.perf_counter() - t
    sources = []
    for name, s in zip(pipeline._source_names(stores), stores):
        entry = results[name]
        scored = entry.get("fit_on_eval")
        sources.append({"name": name, "data": s.manifest.get("dataset"), "n": entry["n"],
                        "metrics": {m: scored[m] for m in SUMMARY_METRICS} if scored else None,
                        "metrics_fit_on_train": entry.get("fit_on_train")})
    protocol = f"{cfg.evaluate.mapping} mapping fitted on each evaluated set; NMI/AMI {cfg.evaluate.average_method}"
    return {"method": method, "folder": str(folder), "sources": sources, "protocol": protocol}


def _fit_pca_to(pca: PCAConfig, train: store.FeatureStore) -> PCAConfig:
    """Pixel features of tiny images can have fewer dimensions than the PCA asks for: keep them all."""
    if pca.enabled and pca.n_components is not None and pca.n_components > min(train.n, train.dim):
        return replace(pca, n_components=min(train.n, train.dim))
    return pca
