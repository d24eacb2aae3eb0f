"""The main job: one configuration, end to end, as a list of stages walked into one run folder.

    RUN/config.yaml             the resolved configuration
    RUN/deepcluster/ pretrain/  a backbone trained first (when configured)
    RUN/features/<dataset>/     one feature store per dataset (nolabel extract)
    RUN/cluster/                PCA + k-means + assignments + metrics (nolabel cluster)
    RUN/views_weak/ views_strong/ scan/ selflabel/   SCAN and self-labeling (when configured)
    RUN/baseline/...            the same clustering on raw pixels, as a reference row
    RUN/summary.json            the results table

A stage is a name, an output folder and one function (`Stage`); `run` walks the list. Every stage
function keeps a record of its inputs - its settings and the fingerprints of what it reads
(`nolabel.record`) - so a finished stage whose inputs are unchanged is skipped, a killed one
resumes, and a change anywhere upstream reruns everything downstream. A folder made by a different
configuration is never overwritten without `force`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from . import store
from .cluster import pca_kmeans
from .config import PCAConfig, RunConfig, dump_config, load_config
from .errors import NolabelError
from .features import ExtractOptions, extract
from .io import slug, write_json, write_text

SUMMARY_METRICS = ("acc", "nmi", "ari", "ami")


# What `nolabel run` runs without a configuration file: the default data through raw pixels,
# EfficientNet-Lite0 and its multi-level features, K = 10, chosen without labels (SelectConfig's
# defaults; configs/auto.yaml spells the same out). Raw pixels are a candidate, so no baseline row.
DEFAULT_RUN_OVERRIDES = ("select={}", "baseline.enabled=false")


def default_config(overrides: list[str] = ()) -> RunConfig:
    """The built-in default run's configuration (`DEFAULT_RUN_OVERRIDES` on the defaults, the default
    data), then `overrides` (e.g. data.train=SPEC, select.n_clusters=auto)."""
    given = list(overrides)
    data = [] if any(o.startswith("data.train=") for o in given) else [f"data.train={default_data()}"]
    return load_config(None, [*DEFAULT_RUN_OVERRIDES, *data, *given])


def default_data() -> str:
    """Fashion-MNIST when its files are here (make install puts them there), else sklearn's digits."""
    from .data import load

    try:
        load("fashion-mnist")
        return "fashion-mnist"
    except NolabelError:
        return "digits"


@dataclass
class Stage:
    """One step of a run: `compute()` brings the output in `folder` up to date with its inputs.

    Every stage function checks its own record (`nolabel.record`) and returns at once when its
    output is finished with the same inputs, resumes unfinished work of the same inputs, and
    recomputes otherwise (the run has claimed the folder, so it may replace what another
    configuration left). `about` says what it will compute, for the log."""

    name: str
    folder: Path
    about: str
    compute: Callable[[], Any]


class _Job:
    """The state stages hand down to later stages: the backbone weights, the feature stores, the
    results rows and the timings."""

    def __init__(self, cfg: RunConfig, out: Path, progress: bool, log: Callable[[str], None]):
        self.cfg, self.out, self.progress, self.log = cfg, out, progress, log
        self.weights, self.trained_by = cfg.model.weights, ""
        self.stores: dict[str, list[store.FeatureStore]] = {}  # per feature space: one store per dataset
        self.rows: list[dict[str, Any]] = []
        self.primary: str | None = None  # the run's clustering: its last stage's, or the one chosen
        self.selected: dict[str, Any] | None = None  # how it was chosen (select)
        self.timings: dict[str, float] = {}

    def walk(self, stage: Stage) -> None:
        """Compute `stage` and log whether it was up to date: its records are then unchanged."""
        before = _records(stage.folder)
        self.log(f"{stage.name}: {stage.about}")
        started = time.perf_counter()
        stage.compute()
        self.timings[stage.name] = time.perf_counter() - started
        after = _records(stage.folder)
        fresh = before == after and after and all('"finished": true' in text for text in after.values())
        self.log(f"{stage.name}: {'up to date' if fresh else f'done in {self.timings[stage.name]:.1f} s'}")


def run(cfg: RunConfig, out: str | os.PathLike | None = None, *, force: bool = False,
        progress: bool = True, log=print) -> dict[str, Any]:
    """Run `cfg` into `out` (default runs/<name>); return the summary written to summary.json."""
    out = Path(out) if out is not None else Path("runs") / cfg.name
    _claim_folder(out, cfg, force)
    log(f"run folder: {out}")
    job = _Job(cfg, out, progress, log)
    for stage in _stages(job):
        job.walk(stage)
    summary = {"name": cfg.name, "folder": str(out), "rows": job.rows, "primary": job.primary,
               **({"selected": job.selected} if job.selected else {}),
               "timings_seconds": {k: round(v, 2) for k, v in job.timings.items()}}
    write_json(out / "summary.json", summary)
    if cfg.report:
        from .report import write_report

        summary["report"] = str(write_report(out))
    return summary


@dataclass
class _Space:
    """A feature space: `name` as the run names it (a model, or MODEL@SIZE), the backbone and image size
    that make it, and the folder of its feature stores (one per dataset)."""

    name: str
    model: str
    image_size: int | None
    weights: str | None
    features: Path


def _stages(job: _Job) -> Iterator[Stage]:
    """The run's stages in order. Generated one at a time: a stage's inputs (e.g. the checkpoint a
    training wrote) are known once the stages before it have run."""
    cfg, out = job.cfg, job.out
    specs = [cfg.data.train, *cfg.data.eval]
    if cfg.deepcluster is not None:
        yield Stage("deepcluster", out / "deepcluster", f"{cfg.deepcluster.version} on {cfg.data.train}, "
                    f"{cfg.deepcluster.epochs} epochs", lambda: _deepcluster(job, out / "deepcluster"))
    if cfg.pretrain is not None:
        yield Stage("pretrain", out / "pretrain", f"SimCLR {cfg.model.name} on {cfg.data.train}, "
                    f"{cfg.pretrain.epochs} epochs", lambda: _pretrain(job, out / "pretrain"))
    if cfg.select is None:
        space = _Space(cfg.model.name, cfg.model.name, cfg.extract.image_size, job.weights, out / "features")
        yield from _feature_stages(job, space, specs, "features")
        methods = ["kmeans"] + ["scan"] * (cfg.scan is not None) + ["selflabel"] * (cfg.selflabel is not None)
        yield from _method_stages(job, space, cfg.kmeans.n_clusters, out, methods, out, "")
        if cfg.turtle is not None:
            yield from _turtle_stages(job, [space], specs, cfg.kmeans.n_clusters, out, cfg.selflabel is not None, "")
    else:
        spaces = [_parse_space(name, cfg, out) for name in cfg.select.spaces]
        for space in spaces:
            yield from _feature_stages(job, space, specs, f"features {space.name}")
        for space in spaces:
            root = out / "candidates" / slug(space.name)
            for k in cfg.select.candidate_ks():
                yield from _method_stages(job, space, k, root / f"k{k}", cfg.select.methods, root,
                                          f" {space.name} K={k}")
        if "turtle" in cfg.select.methods:
            for k in cfg.select.candidate_ks():
                yield from _turtle_stages(job, spaces, specs, k, out / "candidates" / "turtle" / f"k{k}",
                                          "selflabel" in cfg.select.methods, f" K={k}")
        yield Stage("select", out / "select", f"{len(job.rows)} candidates scored without labels by "
                    f"{cfg.select.criterion}", lambda: _select(job, spaces))
    if cfg.baseline.enabled:
        pixels = _Space("raw pixels", "pixels", cfg.baseline.image_size, None, out / "baseline" / "features")
        yield from _feature_stages(job, pixels, specs, "baseline features")
        yield Stage("baseline cluster", out / "baseline" / "cluster", f"PCA + k-means k={cfg.kmeans.n_clusters}",
                    lambda: job.rows.append(_cluster(job, job.stores[pixels.name], out / "baseline" / "cluster",
                                                     pixels.name, cfg.kmeans.n_clusters, primary=False)))


def _parse_space(name: str, cfg: RunConfig, out: Path) -> _Space:
    """MODEL or MODEL@SIZE; the size defaults to extract.image_size (raw pixels: baseline.image_size)."""
    model, at, size = name.partition("@")
    if at and not size.isdigit():
        raise NolabelError(f"select.spaces: {name!r} is not MODEL or MODEL@SIZE (SIZE in pixels)")
    image_size = int(size) if at else (cfg.baseline.image_size if model == "pixels" else cfg.extract.image_size)
    return _Space(name, model, image_size, None, out / "features" / slug(name))


def _feature_stages(job: _Job, space: _Space, specs: list[str], label: str) -> Iterator[Stage]:
    job.stores[space.name] = []
    for spec in specs:
        folder = space.features / slug(spec)
        yield Stage(f"{label} {spec}", folder, f"through {space.model}",
                    partial(_extract, job, space.name, spec, folder, space.model, space.weights, space.image_size))


def _method_stages(job: _Job, space: _Space, k: int, root: Path, methods: list[str], views_root: Path,
                   label: str) -> Iterator[Stage]:
    """The clustering stages of one space and one number of clusters: k-means, then SCAN and
    self-labeling (heads on the space's features) when asked; each adds a results row."""
    cfg = job.cfg
    backbone = space.name + job.trained_by
    if "kmeans" in methods:
        yield Stage(f"cluster{label}", root / "cluster", f"PCA {cfg.pca.n_components if cfg.pca.enabled else 'off'}"
                    f" + k-means k={k}", lambda: job.rows.append(_cluster(
                        job, job.stores[space.name], root / "cluster", backbone, k)))
    if "scan" in methods:
        yield from _scan_stages(job, space, k, root, views_root, "selflabel" in methods, label)


def _select(job: _Job, spaces: list[_Space]) -> None:
    """Score every candidate clustering without labels in every space, choose by the criterion; the
    chosen one becomes the run's primary clustering."""
    from .select import select_clustering

    cfg = job.cfg
    candidates = [row for row in job.rows if row.get("candidate")]
    result = select_clustering(
        job.out / "select", {row["method"]: Path(row["folder"]) for row in candidates},
        {space.name: job.stores[space.name][0] for space in spaces}, cfg.select, force=True)
    for row in candidates:
        row["label_free"] = result["scores"][row["method"]]
    chosen = next(row for row in candidates if row["method"] == result["chosen"])
    job.primary = chosen["folder"]
    job.selected = {"method": chosen["method"], "n_clusters": chosen["n_clusters"], "criterion": cfg.select.criterion,
                    "score": result["scores"][chosen["method"]][cfg.select.criterion]}
    if len({row["n_clusters"] for row in candidates}) > 1:
        job.selected["k_criterion"] = cfg.select.k_criterion


def _records(folder: Path) -> dict[str, str]:
    """The text of every record under `folder` (a stage's own, and those of what it holds)."""
    return {str(p): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*record.json"))} \
        if folder.is_dir() else {}


def format_summary(summary: dict[str, Any]) -> str:
    """The results table: one row per method and dataset, ACC / NMI / ARI / AMI; when the run chose
    without labels, the criterion's score of each candidate and a * at the chosen one."""
    selected = summary.get("selected")
    criterion = selected["criterion"] if selected else None
    score = f" {criterion[:12]:>12}" if criterion else ""
    width = max([42] + [len(row["method"]) + 2 * bool(selected) for row in summary["rows"]])
    header = f"{'method':<{width}} {'data':<24} {'n':>7}{score} " + " ".join(f"{m.upper():>6}" for m in SUMMARY_METRICS)
    lines = [header, "-" * len(header)]
    for row in summary["rows"]:
        chosen = bool(selected) and row["folder"] == summary.get("primary")
        method = ("* " if chosen else "  " if selected else "") + row["method"]
        for source in row["sources"]:
            values = source.get("metrics")
            cells = " ".join(f"{values[m]:6.3f}" if values else f"{'-':>6}" for m in SUMMARY_METRICS)
            label_free = row.get("label_free", {}).get(criterion) if criterion else None
            score = (f" {label_free:12.4f}" if label_free is not None else f" {'':>12}") if criterion else ""
            lines.append(f"{method:<{width}} {source['data'][:24]:<24} {source['n']:>7}{score} {cells}")
    if selected:
        how = f"K by {selected['k_criterion']}, then " if selected.get("k_criterion") else ""
        lines.append(f"* chosen without labels: {how}the best {criterion} among the candidates"
                     f"{' of that K' if how else ''} (the label metrics only score it)")
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


def _deepcluster(job: _Job, folder: Path) -> None:
    """Train cfg.model.name with DeepCluster on the train images; extraction then uses its backbone."""
    from .pretrain.deepcluster import train_deepcluster
    from .data import load

    cfg = job.cfg
    dataset = load(cfg.data.train, on_bad_image=cfg.data.on_bad_image)
    if not hasattr(dataset, "images"):
        raise NolabelError(f"{cfg.data.train}: DeepCluster trains on images held in memory (Fashion-MNIST, "
                           "MNIST, digits, CIFAR, STL-10); this dataset is a folder of files")
    result = train_deepcluster(dataset.images, folder, replace(cfg.deepcluster, model=cfg.model.name),
                               labels=dataset.labels, show_progress=job.progress, force=True)
    job.weights, job.trained_by = str(result.checkpoint), " (DeepCluster)"


def _pretrain(job: _Job, folder: Path) -> None:
    """Train cfg.model.name with SimCLR on the train images; extraction then uses its backbone."""
    from .pretrain.simclr import SimCLRConfig, pretrain_simclr

    cfg = job.cfg
    library = SimCLRConfig(**{f.name: getattr(cfg.pretrain, f.name) for f in fields(SimCLRConfig)})
    result = pretrain_simclr(cfg.data.train, folder, replace(library, model=cfg.model.name), force=True,
                             show_progress=job.progress)
    job.weights, job.trained_by = str(result.checkpoint), " (SimCLR)"


def _scan_stages(job: _Job, space: _Space, k: int, root: Path, views_root: Path, selflabel: bool,
                 label: str) -> Iterator[Stage]:
    """SCAN (+ self-labeling) trained on the space's train set, after the augmented views they sample
    in features mode (written once per space); one results row each, scoring the train set and every
    eval set."""
    from .cluster.scan import run_scan, write_augmented_views
    from .cluster.selflabel import run_selflabel

    cfg = job.cfg
    scan, network = cfg.scan, cfg.scan.mode == "network"
    views: dict[str, list[Path]] = {"weak": [], "strong": []}
    # the strong views are written once, as many as the stage that samples most of them needs
    wanted = {"weak": scan.weak_views,
              "strong": max(scan.strong_views, cfg.selflabel.strong_views if cfg.selflabel else 0)}

    def write_views(kind: str) -> None:
        views[kind] = write_augmented_views(
            cfg.data.train, space.model, views_root / f"views_{kind}", kind=kind, n_views=wanted[kind],
            weights=space.weights, image_size=space.image_size, bf16=cfg.extract.precision == "bf16",
            backend=cfg.extract.backend, seed=scan.random_state, show_progress=job.progress)

    for kind in ("weak", "strong"):
        if not network and wanted[kind]:
            yield Stage(f"views {kind}{label}", views_root / f"views_{kind}",
                        f"{wanted[kind]} {kind} view(s) of every image", partial(write_views, kind))

    def inputs(**more: Any) -> dict[str, Any]:
        stores = job.stores[space.name]
        if network:
            return {"data": cfg.data.train, "model": space.model, "image_size": space.image_size,
                    "eval_data": cfg.data.eval, **more}
        return {"features": str(stores[0].path), "eval_features": [s.path for s in stores[1:]]}

    backbone = space.name + job.trained_by

    def train_scan() -> None:
        run_scan(root / "scan", **inputs(weights=space.weights),
                 augmented=views["weak"][:scan.weak_views] + views["strong"][:scan.strong_views],
                 pca_components=scan.pca, config=replace(scan.library_config(), n_clusters=k),
                 evaluate=cfg.evaluate, force=True, show_progress=job.progress)
        job.rows.append(_row(job, root / "scan", backbone))

    yield Stage(f"scan{label}", root / "scan", f"{scan.n_heads} heads, K = {k}, {scan.mode} mode", train_scan)
    if selflabel:
        def train_selflabel() -> None:
            run_selflabel(root / "scan", root / "selflabel", **inputs(),
                          augmented=views["strong"][:cfg.selflabel.strong_views],
                          config=cfg.selflabel.library_config(), evaluate=cfg.evaluate, force=True,
                          show_progress=job.progress)
            job.rows.append(_row(job, root / "selflabel", backbone))

        yield Stage(f"selflabel{label}", root / "selflabel", f"confidence > {cfg.selflabel.threshold}",
                    train_selflabel)


def _turtle_stages(job: _Job, spaces: list[_Space], specs: list[str], k: int, root: Path, selflabel: bool,
                   label: str) -> Iterator[Stage]:
    """TURTLE over `spaces` (their feature stages already yielded) and the turtle section's further
    spaces (extracted here unless already there), then self-labeling of its task encoder when asked;
    one results row each, scoring the train set and every eval set."""
    from .cluster.turtle import run_turtle, run_turtle_selflabel

    cfg, out = job.cfg, job.out
    known = {space.name for space in spaces}
    extra = [_parse_space(name, cfg, out) for name in cfg.turtle.spaces if name not in known]
    for space in extra:
        if space.name not in job.stores:
            yield from _feature_stages(job, space, specs, f"features {space.name}")
    spaces = spaces + extra
    family = " + ".join(space.name + (job.trained_by if space.name == cfg.model.name else "") for space in spaces)

    def sets() -> tuple[list[Path], list[list[Path]]]:  # train folders, then per eval set (one per space)
        stores = [job.stores[space.name] for space in spaces]
        return [s[0].path for s in stores], [[s[i].path for s in stores] for i in range(1, len(specs))]

    def train_turtle() -> None:
        train, evals = sets()
        run_turtle(root / "turtle", train, pca_components=cfg.turtle.pca, split_levels=cfg.turtle.split_levels,
                   config=replace(cfg.turtle.library_config(), n_clusters=k), eval_features=evals,
                   evaluate=cfg.evaluate, force=True, show_progress=job.progress)
        job.rows.append(_row(job, root / "turtle", family))

    yield Stage(f"turtle{label}", root / "turtle", f"{len(spaces)} backbone(s), K = {k}, "
                f"{cfg.turtle.n_restarts} restart(s)", train_turtle)
    if selflabel:
        def train_selflabel() -> None:
            train, evals = sets()
            run_turtle_selflabel(root / "turtle", root / "turtle_selflabel", train,
                                 config=cfg.selflabel.library_config(), eval_features=evals, evaluate=cfg.evaluate,
                                 force=True, show_progress=job.progress)
            job.rows.append(_row(job, root / "turtle_selflabel", family))

        yield Stage(f"turtle selflabel{label}", root / "turtle_selflabel",
                    f"confidence > {cfg.selflabel.threshold}", train_selflabel)


def _row(job: _Job, folder: Path, backbone: str, primary: bool = True) -> dict[str, Any]:
    """The results row of a clustering stage (any method): each source's metrics under the mapping
    fitted on that source (and, for eval sets, the one fitted on train). `primary`: the run's own
    clustering, as opposed to the raw-pixel reference; the last one is the run's primary clustering
    (under select: a candidate, until the choice is made)."""
    from .clustering import load_clustering

    clustering = load_clustering(folder)
    sources = []
    for name in clustering.sources:
        entry = clustering.metrics[name]
        scored = entry.get("fit_on_eval")
        sources.append({"name": name, "data": clustering.dataset(name), "n": entry["n"],
                        "metrics": {m: scored[m] for m in SUMMARY_METRICS} if scored else None,
                        "metrics_fit_on_train": entry.get("fit_on_train")})
    evaluate = job.cfg.evaluate
    if primary:
        job.primary = str(folder)
    family = f"{backbone} + {clustering.method}"  # the method, whatever its number of clusters
    candidate = primary and job.cfg.select is not None
    return {"method": f"{family}, K = {clustering.n_clusters}" if candidate else family, "family": family,
            "folder": str(folder), "sources": sources, "n_clusters": clustering.n_clusters, "candidate": candidate,
            "protocol": f"{evaluate.mapping} mapping fitted on each evaluated set; NMI/AMI {evaluate.average_method}"}


def _extract(job: _Job, family: str, spec: str, folder: Path, model: str, weights: str | None,
             image_size: int | None) -> None:
    cfg = job.cfg
    options = ExtractOptions(batch_size=cfg.extract.batch_size, image_size=image_size,
                             device=cfg.extract.device, dtype=cfg.extract.dtype,
                             precision=cfg.extract.precision, backend=cfg.extract.backend,
                             workers=cfg.extract.workers,
                             on_bad_image=cfg.data.on_bad_image)
    job.stores[family].append(extract(spec, model, folder, weights=weights, allow_pickle=cfg.model.trust_checkpoint,
                                      download=cfg.model.download and model == cfg.model.name, options=options,
                                      force=True, progress=job.progress))


def _cluster(job: _Job, stores: list[store.FeatureStore], folder: Path, backbone: str, n_clusters: int,
             primary: bool = True) -> dict[str, Any]:
    cfg = job.cfg
    pca_kmeans.cluster_stores(stores[0], stores[1:], folder, pca=_fit_pca_to(cfg.pca, stores[0]),
                              kmeans=replace(cfg.kmeans, n_clusters=n_clusters), evaluate=cfg.evaluate, force=True,
                              progress=job.progress)
    return _row(job, folder, backbone, primary)


def _fit_pca_to(pca: PCAConfig, train: store.FeatureStore) -> PCAConfig:
    """Pixel features of tiny images can have fewer dimensions than the PCA asks for: keep them all."""
    if pca.enabled and pca.n_components is not None and pca.n_components > min(train.n, train.dim):
        return replace(pca, n_components=min(train.n, train.dim))
    return pca
