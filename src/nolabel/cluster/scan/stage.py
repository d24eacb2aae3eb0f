"""The SCAN stage from files: mine neighbours, train, keep the result; predict new images.

`run_scan` is what `nolabel scan` and `nolabel run` call; `predict_scan` assigns new features or
images under a finished stage's kept (or self-labeled) head.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ... import distributed, record
from ...clustering import Source
from ...config import EvaluateConfig, ScanConfig
from ...errors import NolabelError
from ...store import unique_names
from .heads import ListHead
from .train import FeatureInputs, ImageInputs, _json, _predict, load_scan, train_scan_features, train_scan_network


def load_stage_inputs(features: str | Path | np.ndarray | None, augmented: list[str | Path] | tuple = (),
                      data: str | None = None,
                      model: str | None = None, weights: str | Path | None = None, image_size: int | None = None,
                      backbone_state: dict | None = None) -> dict[str, Any]:
    """What a SCAN or self-labeling stage trains on, from files.

    Frozen mode (`features` given: a FeatureStore folder, or an (N, D) array): the (N, D) features as
    float32, the store's labels, and the (V, N, D) features of the augmented-view stores. Network mode
    (`data` and `model`): the dataset's
    images in memory and the backbone (`weights` file, or a saved `backbone_state`).
    """
    from ...store import FeatureStore

    if (features is None) == (data is None):
        raise NolabelError("give either --features (heads on frozen features) or --data and --model (whole network)")
    if isinstance(features, np.ndarray):  # features in hand (e.g. `nolabel.clustering.assign`)
        return {"mode": "features", "features": np.asarray(features, dtype=np.float32), "augmented": None,
                "labels": None}
    if features is not None:
        store = FeatureStore.open(features)
        x = np.asarray(store.features, dtype=np.float32)
        views = [np.asarray(FeatureStore.open(a).features, dtype=np.float32) for a in augmented]
        for path, v in zip(augmented, views):
            if v.shape != x.shape:
                raise NolabelError(f"{path}: augmented features of shape {v.shape} do not match "
                                   f"{x.shape} of {features}")
        return {"mode": "features", "features": x, "augmented": np.stack(views) if views else None,
                "labels": store.labels if store.has_labels else None}
    from ...data import load
    from ...models import create
    from ...training import images_in_memory

    if model is None:
        raise NolabelError("network mode needs --model NAME (and usually --weights from `nolabel pretrain simclr`)")
    backbone = create(model, weights=weights, pretrained=weights is None and backbone_state is None)
    if backbone_state is not None:
        backbone.load_state_dict(backbone_state)
    dataset = load(data)
    size = image_size or backbone.input_size
    return {"mode": "network", "images": images_in_memory(dataset, size), "backbone": backbone,
            "image_size": size, "labels": dataset.labels if (dataset.labels >= 0).any() else None}


def predict_scan(scan_dir: str | Path, *, features: str | Path | np.ndarray | None = None, data: str | None = None,
                 image_size: int | None = None, selflabel_dir: str | Path | None = None, batch_size: int = 512,
                 device: str = "auto") -> np.ndarray:
    """Cluster probabilities (N, K) of new images under a finished SCAN stage's kept head, or under
    its self-labeled version (`selflabel_dir`, a `run_selflabel` output made from `scan_dir`).

    Frozen-features SCAN takes `features`, a FeatureStore folder or an (N, D) array of the same
    backbone (SCAN's PCA, if any, is applied); whole-network SCAN takes `data`, a dataset spec run
    through the backbone it trained.
    """
    from ...io import read_json

    scan_dir = Path(scan_dir)
    heads, best, saved = load_scan(scan_dir / "scan.pt")
    backbone_state = saved["modules"].get("backbone")
    if (features is None) == (data is None):
        raise NolabelError("give either features (frozen-features SCAN) or data (whole-network SCAN)")
    if (backbone_state is None) != (features is not None):
        ran = "on frozen features" if backbone_state is None else "on the whole network"
        raise NolabelError(f"{scan_dir}: SCAN ran {ran};"
                           f" predict from {'features' if backbone_state is None else 'data (images)'}")
    inputs = load_stage_inputs(features, (), data, saved["meta"].get("model"), None, image_size, backbone_state)
    inputs = apply_stage_pca(scan_dir, inputs)
    head = heads.single(best)
    body = head if inputs["mode"] == "features" else nn.Sequential(inputs["backbone"], head)
    model = ListHead(body)
    skipped = selflabel_dir is not None and (Path(selflabel_dir) / "selflabel.json").is_file() and \
        read_json(Path(selflabel_dir) / "selflabel.json").get("skipped")
    if selflabel_dir is not None and not skipped:  # a skipped self-labeling kept the SCAN head as it was
        from ...training import load_result

        trained = load_result(Path(selflabel_dir) / "selflabel.pt", "selflabel", "selflabel")
        modules = trained["modules"]
        if "ema" in modules:  # the averaged weights are the ones self-labeling predicted with
            model.load_state_dict(modules["ema"])
        else:
            head.load_state_dict(modules["head"])
            if "backbone" in modules:
                inputs["backbone"].load_state_dict(modules["backbone"])
    if inputs["mode"] == "features":
        source = FeatureInputs(inputs["features"])
    else:
        from ...training import network_input

        source = ImageInputs(inputs["images"], network_input(inputs["backbone"], inputs["image_size"]), None)
    model.to(distributed.resolve_device(device))
    try:
        return _predict(model, source, source.n, batch_size, bf16=False)[0]
    finally:
        model.to("cpu")


def write_augmented_views(data: str, model: str, out_dir: str | Path, *, kind: str = "strong", n_views: int = 2,
                          weights: str | Path | None = None, image_size: int | None = None, bf16: bool = False,
                          seed: int = 0, batch_size: int = 256, show_progress: bool = True,
                          backend: str = "auto") -> list[Path]:
    """Features of `n_views` random augmented views of every image, one FeatureStore per view
    (`out_dir/view0`, ...), for SCAN and self-labeling on frozen features (`augmented=` of `run_scan`,
    `run_selflabel`). kind: "weak" (flip + translation) or "strong" (weak + 4 RandAugment-style ops +
    Cutout). Finished views are kept (resumable) while their record matches the request - the
    images by content, the weights by hash, the augmentation, seed, precision and backend; a view
    computed from anything else is recomputed, with a message. The views are augmented as tensors,
    then run through `backend` (`nolabel.models.backends`, as feature extraction; auto: the fastest
    installed that computes in the precision)."""
    from ...augment import StrongAugment, WeakAugment
    from ...data import load
    from ...models import backends, create
    from ...pretrain.simclr import extract_features
    from ...store import FeatureStore, is_complete, write_store
    from ...training import images_in_memory

    augments = {"weak": WeakAugment, "strong": StrongAugment}
    if kind not in augments:
        raise NolabelError(f"augmented view kind must be one of {sorted(augments)}, got {kind!r}")
    backbone = create(model, weights=weights).eval()
    dataset = load(data)
    data_fingerprint = dataset.fingerprint()
    size = image_size or backbone.input_size
    images = images_in_memory(dataset, size)
    precision = "bf16" if bf16 else "fp32"
    chosen = backends.resolve(backend, precision)
    forward = None  # loaded (exported if need be) once a view has to be computed
    out = Path(out_dir)
    paths = []
    for v in range(n_views):
        path = out / f"view{v}"
        paths.append(path)
        wanted = {"data": data, "data_fingerprint": data_fingerprint, "model": model,
                  "weights_sha256": getattr(backbone.load_report, "sha256", None), "image_size": size,
                  "augmentation": kind, "view": v, "seed": seed, "bf16": bf16, "backend": chosen,
                  "batch_size": batch_size}
        previous = record.read(path)
        if is_complete(path) and previous is not None and previous["fingerprint"] == record.fingerprint(wanted):
            continue
        if previous is not None:
            changed = ", ".join(record.differences(previous["inputs"], wanted))
            print(f"{path}: stored {kind} view differs in {changed}; recomputing it", flush=True)
        if forward is None:
            forward = backends.load(backbone, size, backend=chosen, precision=precision, fallback=backend == "auto")
            chosen = wanted["backend"] = forward.backend  # auto's choice may fail to export (a note says so)
        generator = torch.Generator().manual_seed(seed * 1000 + v)
        feats = extract_features(backbone, images, size, batch_size, bf16, show_progress, augments[kind](), generator,
                                 forward=forward)
        write_store(path, feats, dataset.labels, dataset.item_names,
                    {**wanted, "weights": str(weights) if weights else None}, inputs=wanted)
    return [FeatureStore.open(p).path for p in paths]


PCA_FILE = "pca.npz"
NEIGHBORS_RECORD = "neighbors.record.json"
TRAINING_RECORD = "training.record.json"


def project_inputs(inputs: dict[str, Any], pca: Any) -> dict[str, Any]:
    """Frozen-mode stage inputs (`load_stage_inputs`) with the clean (N, D) and augmented (V, N, D)
    features projected by a fitted `nolabel.cluster.pca.PCA` to (N, d) and (V, N, d)."""
    if pca.components_.shape[1] != inputs["features"].shape[1]:
        raise NolabelError(f"the stage's PCA expects {pca.components_.shape[1]}-d features, "
                           f"got {inputs['features'].shape[1]}-d")
    augmented = inputs["augmented"]
    return {**inputs, "features": pca.transform(inputs["features"]),
            "augmented": None if augmented is None else np.stack([pca.transform(v) for v in augmented])}


def apply_stage_pca(scan_dir: str | Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """Frozen-mode inputs through the PCA a SCAN stage in `scan_dir` fitted (as they are without one)."""
    path = Path(scan_dir) / PCA_FILE
    if inputs["mode"] != "features" or not path.exists():
        return inputs
    from ..pca import PCA

    return project_inputs(inputs, PCA.load(path))


def _stage_pca(out: Path, inputs: dict[str, Any], n_components: int | None, refit: bool) -> dict[str, Any]:
    """PCA before the heads (frozen mode): fitted on the clean features, saved as `out/pca.npz` for
    self-labeling and reused when an interrupted run resumes (`refit`: the stage starts over, so a
    saved PCA belongs to other inputs). MLP heads on all 3,880 dimensions of
    `efficientnet_lite0_multilevel` would cost a CPU many times more per step than on 256."""
    from ..pca import PCA

    path = out / PCA_FILE
    if n_components is None:
        if path.exists():  # from an earlier run of this folder with PCA: it must not reach self-labeling
            path.unlink()
        return inputs
    n, dim = inputs["features"].shape
    if n_components > min(n, dim):
        raise NolabelError(f"PCA to {n_components} dimensions: the features have {n} rows of width {dim}; "
                           f"ask for at most {min(n, dim)}")
    pca = PCA.load(path) if path.exists() and not refit else None
    if pca is None or pca.components_.shape != (n_components, dim):
        pca = PCA(n_components).fit(inputs["features"])
        if distributed.is_main():
            out.mkdir(parents=True, exist_ok=True)
            pca.save(path)
    return project_inputs(inputs, pca)


def stage_source(features: str | Path | None, augmented: list[str | Path] | tuple = (), data: str | None = None,
                 model: str | None = None, weights: str | Path | None = None, image_size: int | None = None
                 ) -> dict[str, Any]:
    """What a SCAN or self-labeling stage reads, for its record, without loading it: the feature
    stores by fingerprint (frozen mode), or the images by content and the backbone by name and
    weights hash (network mode)."""
    from ...store import FeatureStore

    if features is not None:
        return {"mode": "features", "features": FeatureStore.open(features).fingerprint,
                "views": [FeatureStore.open(a).fingerprint for a in augmented]}
    from ...data import load
    from ...io import sha256_file

    if data is None:
        raise NolabelError("give either --features (heads on frozen features) or --data and --model (whole network)")
    return {"mode": "network", "data": data, "data_fingerprint": load(data).fingerprint(), "model": model,
            "weights_sha256": sha256_file(weights) if weights else None, "image_size": image_size}


def run_scan(out_dir: str | Path, *, features: str | Path | None = None, augmented: list[str | Path] | tuple = (),
             data: str | None = None, model: str | None = None, weights: str | Path | None = None,
             image_size: int | None = None, pca_components: int | None = None, config: ScanConfig | None = None,
             eval_features: Sequence[str | Path] = (), eval_data: Sequence[str] = (),
             evaluate: EvaluateConfig = EvaluateConfig(), force: bool = False,
             show_progress: bool = True) -> dict[str, Any]:
    """The SCAN stage from files: mine neighbours, train, and write the SCAN clustering into
    `out_dir` (`nolabel.clustering`: assignments.csv, metrics.json, clustering.json, record.json),
    beside what training leaves: neighbors.npy, scan.pt, probabilities.npy (N, K), predictions.npy
    (N,) and scan.json (chosen head, per-head losses, neighbour purity).

    The clustering's sources are the train images and every eval set - `eval_features` (feature
    folders of the same backbone, frozen mode) or `eval_data` (dataset specs, whole-network mode) -
    assigned by the kept head and scored where they have labels. Returns metrics.json's content.

    A clustering finished in `out_dir` from the same inputs is returned as it is; an unfinished one
    resumes; one made from others is replaced only with `force`. Training and neighbours keep
    records of their own (training.record.json, neighbors.record.json): another eval set reuses the
    trained heads, and neighbours mined from the same features (and PCA) with the same count are
    reused even when the heads are trained again.

    pca_components: frozen mode only; project the features (and augmented views) to this many PCA
    dimensions before mining neighbours and training the heads (the PCA is saved as pca.npz and
    self-labeling applies it too)."""
    from ...io import read_json

    out = Path(out_dir)
    config = config or ScanConfig()
    config.validate()
    distributed.resolve_device(config.device)  # a missing GPU fails here, before any file is written
    if pca_components is not None and (data is not None or pca_components < 1):
        raise NolabelError("PCA before the heads takes a number of dimensions >= 1 and applies to frozen "
                           f"features (--features) only; got {pca_components} with "
                           f"{'--data (whole network)' if data is not None else '--features'}")
    source = stage_source(features, augmented, data, model, weights, image_size)
    evals = eval_sources(eval_features, eval_data, network=data is not None)
    training = {**source, "pca": pca_components, "config": record.without(asdict(config), "device")}
    stage_inputs = {"training": training, "evals": [e["inputs"] for e in evals], "evaluate": asdict(evaluate)}
    if record.begin(out, "scan", stage_inputs, force=force, what="a SCAN clustering") is record.DONE:
        return read_json(out / "metrics.json")
    if not record.is_done(out, training, name=TRAINING_RECORD):
        _train_scan_stage(out, training, features, augmented, data, model, weights, image_size, pca_components,
                          config, show_progress)
    summary = read_json(out / "scan.json")
    scored = write_head_clustering(
        out, "SCAN", _train_source(features, data), np.load(out / "probabilities.npy", mmap_mode="r"), evals,
        {"kind": "head", "scan": ".", "selflabel": None, "mode": source["mode"], "image_size": image_size},
        evaluate, config.device, settings=stage_inputs,
        fitted={"best_head": summary["best_head"], "neighbor_purity": summary["neighbor_purity"]})
    record.finish(out, "scan", stage_inputs)
    return scored


def _train_scan_stage(out: Path, training: dict[str, Any], features, augmented, data, model, weights, image_size,
                      pca_components: int | None, config: ScanConfig, show_progress: bool) -> None:
    """Mine (or reuse) the neighbours and train the heads; write scan.pt, probabilities.npy,
    predictions.npy, scan.json and finish training.record.json."""
    from ...io import save_npy, write_json
    from ..neighbors import load_neighbors, mine_neighbors, neighbor_purity, save_neighbors

    status = record.begin(out, "scan-training", training, force=True, name=TRAINING_RECORD)
    if status is record.START:  # a training state here belongs to other inputs
        (out / "scan_state.pt").unlink(missing_ok=True)
    inputs = load_stage_inputs(features, augmented, data, model, weights, image_size)
    started = time.perf_counter()
    inputs = _stage_pca(out, inputs, pca_components, refit=status is record.START)
    if inputs["mode"] == "features":
        base = inputs["features"]
    else:
        from ...pretrain.simclr import extract_features

        base = extract_features(inputs["backbone"], inputs["images"], inputs["image_size"], bf16=config.bf16)
    # Neighbours keep a record of their own: reused only when mined in the same space, as many.
    space = {k: v for k, v in training.items() if k not in ("views", "config", "pca")}
    nb_inputs = {"space": space, "pca": pca_components,
                 "bf16": config.bf16 if inputs["mode"] == "network" else None, "n_neighbors": config.n_neighbors}
    nb_path = out / "neighbors.npy"
    if record.is_done(out, nb_inputs, name=NEIGHBORS_RECORD):
        neighbors = load_neighbors(nb_path, n=len(base))
    else:
        neighbors = mine_neighbors(base, n_neighbors=config.n_neighbors)
        if distributed.is_main():
            save_neighbors(nb_path, neighbors)
            record.finish(out, "neighbors", nb_inputs, name=NEIGHBORS_RECORD)
    mined = time.perf_counter() - started
    labels = inputs["labels"]
    if inputs["mode"] == "features":
        result = train_scan_features(base, neighbors, config, inputs["augmented"], out, show_progress)
    else:
        result = train_scan_network(inputs["images"], inputs["backbone"], neighbors, config,
                                    image_size=inputs["image_size"], out_dir=out, show_progress=show_progress)
    summary = {
        "mode": inputs["mode"], "n": int(len(base)), "n_neighbors": int(neighbors.shape[1]),
        "augmented_views": 0 if inputs.get("augmented") is None else len(inputs["augmented"]),
        "pca_components": pca_components,
        "neighbor_purity": neighbor_purity(neighbors, labels) if labels is not None else None,
        "best_head": result.best_head, "head_losses": result.head_losses,
        "seconds": {"neighbors": mined, "train": result.seconds},
        "config": _json(config),
    }
    if distributed.is_main():
        save_npy(out / "probabilities.npy", np.asarray(result.probabilities, dtype=np.float32))
        save_npy(out / "predictions.npy", result.predictions.astype(np.int64))
        write_json(out / "scan.json", summary)
    record.finish(out, "scan-training", training, name=TRAINING_RECORD)


def eval_sources(eval_features: Sequence[str | Path], eval_data: Sequence[str], network: bool) -> list[dict[str, Any]]:
    """The eval sets a SCAN or self-labeling clustering assigns: each one's name, how to read it, and
    its fingerprint for the stage's record. Frozen mode takes feature folders, whole-network mode
    dataset specs."""
    from ...data import load
    from ...io import slug
    from ...store import FeatureStore

    if (eval_features and network) or (eval_data and not network):
        raise NolabelError("eval features go with frozen features (--eval-features with --features), eval data "
                           "with the whole network (--eval-data with --data)")
    evals, names = [], ["train"]
    for path in eval_features:
        store = FeatureStore.open(path)
        evals.append({"features": store.path, "store": store, "inputs": {"features": store.fingerprint}})
        names.append(store.path.name or "eval")
    for spec in eval_data:
        dataset = load(spec)
        evals.append({"data": spec, "dataset": dataset,
                      "inputs": {"data": spec, "data_fingerprint": dataset.fingerprint()}})
        names.append(slug(spec))
    for entry, name in zip(evals, unique_names(names)[1:]):
        entry["name"] = name
    return evals


def write_head_clustering(out: Path, method: str, train: Source, probabilities: np.ndarray,
                          evals: list[dict[str, Any]], assigner: dict[str, Any], evaluate: EvaluateConfig,
                          device: str, settings: dict[str, Any], fitted: dict[str, Any]) -> dict[str, Any]:
    """The clustering of a trained head (SCAN or self-labeling): the train images from the
    training's own probabilities, each eval set assigned through `nolabel.clustering.assign`; the
    clustering artifact written into `out`. Returns metrics.json's content."""
    from ...clustering import write_clustering
    from ...io import save_npy

    n_clusters = int(probabilities.shape[1])
    sources, clusters, confidence = [train], [np.asarray(probabilities).argmax(1)], [np.asarray(probabilities).max(1)]
    for entry in evals:
        scan_dir = out / assigner["scan"]
        selflabel = out / assigner["selflabel"] if assigner.get("selflabel") else None
        p = predict_scan(scan_dir, features=entry.get("features"), data=entry.get("data"),
                         image_size=assigner.get("image_size"), selflabel_dir=selflabel, device=device)
        if distributed.is_main():
            save_npy(out / f"probabilities_{entry['name']}.npy", p.astype(np.float32))
        source = (Source.of_store(entry["name"], entry["store"]) if "store" in entry else
                  Source(entry["name"], entry["data"], entry["dataset"].item_names, entry["dataset"].labels,
                         entry["dataset"].classes))
        if len(p) != len(source.items):
            raise NolabelError(f"{source.dataset}: {len(p)} images predicted for {len(source.items)} rows")
        sources.append(source)
        clusters.append(p.argmax(1))
        confidence.append(p.max(1))
    return write_clustering(out, method=method, sources=sources, clusters=clusters, confidence=confidence,
                            n_clusters=n_clusters, assigner=assigner, evaluate=evaluate, settings=settings,
                            fitted=fitted)


def _train_source(features: str | Path | None, data: str | None) -> Source:
    """The train images of a SCAN or self-labeling stage as a clustering source."""
    from ...data import load
    from ...store import FeatureStore

    if features is not None:
        return Source.of_store("train", FeatureStore.open(features))
    dataset = load(data)
    return Source("train", data, dataset.item_names, dataset.labels, dataset.classes)

