"""Typed run configuration: dataclasses with defaults, loaded from YAML, overridden by --set.

A configuration names every choice of a run - dataset, backbone and weights, extraction, PCA,
k-means and the evaluation protocol - so a run folder's `config.yaml` says exactly what produced
its numbers. Unknown keys and values of the wrong type are errors, never silently ignored.

    cfg = load_config("configs/fashion-mnist.yaml", overrides=["kmeans.n_clusters=20", "pca.n_components=null"])
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import NolabelError

DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------- training methods
# Hyper-parameters of the methods that train (SimCLR, DeepCluster, SCAN, self-labeling): declared
# here, so that reading a configuration imports no training code; each method takes its own.

DEEPCLUSTER_VERSIONS = ("v1", "v2")
DEEPCLUSTER_SCHEDULES = ("constant", "cosine")


@dataclass
class DeepClusterConfig:
    """Hyper-parameters of `train_deepcluster`. `None` fields take the version's default."""

    version: str = "v1"
    model: str = "cnn28"
    n_clusters: int = 100  # v1: k-means clusters (the paper overclusters: 10x the classes); v2: prototypes per head
    heads: int = 3  # v2: clustering heads, each its own k-means run and frozen prototypes
    epochs: int = 20
    epoch_size: int | None = None  # images trained on per epoch (v1: drawn per cluster; v2: a random subset); None: N
    batch_size: int = 256
    lr: float = 0.05  # SGD with momentum; v1's paper value
    momentum: float = 0.9
    weight_decay: float = 1e-5
    schedule: str = "cosine"  # "constant" (the v1 paper) or "cosine" per step (better for short runs)
    warmup_epochs: float = 0.0
    pca_dim: int = 256  # v1: PCA components, clamped to min(pca_dim, D, N)
    kmeans_iter: int | None = None  # None: 20 (v1), 10 (v2)
    temperature: float = 0.1  # v2: softmax temperature of the prototype logits
    projection_dim: int = 128  # v2: embedding size
    image_size: int | None = None  # default: the backbone's input size
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float | None = None  # None: 0 (v1: crops and flips only), 0.8 (v2: SwAV's colour distortion)
    grayscale_p: float | None = None  # None: 0 (v1), 0.2 (v2)
    bf16: bool = False
    random_state: int = 0

    def resolved(self) -> "DeepClusterConfig":
        """A copy with every version-dependent default filled in, validated."""
        v1 = self.version == "v1"
        filled = DeepClusterConfig(**{**asdict(self),
                                      "kmeans_iter": (20 if v1 else 10) if self.kmeans_iter is None
                                      else self.kmeans_iter,
                                      "jitter_p": (0.0 if v1 else 0.8) if self.jitter_p is None else self.jitter_p,
                                      "grayscale_p": (0.0 if v1 else 0.2) if self.grayscale_p is None
                                      else self.grayscale_p})
        filled.crop_scale, filled.jitter = tuple(filled.crop_scale), tuple(filled.jitter)
        filled.validate()
        return filled

    def validate(self) -> None:
        if self.version not in DEEPCLUSTER_VERSIONS:
            raise NolabelError(f"DeepCluster version must be one of {', '.join(DEEPCLUSTER_VERSIONS)}, "
                               f"got {self.version!r}")
        if self.schedule not in DEEPCLUSTER_SCHEDULES:
            raise NolabelError(f"DeepCluster schedule must be one of {', '.join(DEEPCLUSTER_SCHEDULES)}, "
                               f"got {self.schedule!r}")
        for name in ("n_clusters", "heads", "epochs", "batch_size", "pca_dim", "projection_dim"):
            if getattr(self, name) < 1:
                raise NolabelError(f"DeepCluster {name} must be a positive integer, got {getattr(self, name)}")
        if self.n_clusters < 2:
            raise NolabelError(f"DeepCluster needs n_clusters >= 2, got {self.n_clusters}")
        if self.epoch_size is not None and self.epoch_size < self.batch_size:
            raise NolabelError(f"DeepCluster epoch_size ({self.epoch_size}) must hold at least one batch "
                               f"({self.batch_size})")
        if self.kmeans_iter is not None and self.kmeans_iter < 1:
            raise NolabelError(f"DeepCluster kmeans_iter must be positive, got {self.kmeans_iter}")
        if self.lr <= 0 or self.temperature <= 0:
            raise NolabelError(f"DeepCluster lr and temperature must be positive, got {self.lr} and {self.temperature}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise NolabelError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")


@dataclass
class SimCLRConfig:
    """Hyper-parameters of `train_simclr` (SCAN's CIFAR settings, scaled for small data where noted)."""

    model: str = "cnn28"
    epochs: int = 20
    batch_size: int = 512
    lr: float = 0.5  # for batch_size; SGD momentum 0.9, cosine to 0 per step
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    temperature: float = 0.1
    projection_dim: int = 128
    image_size: int | None = None  # default: the backbone's input size
    crop_scale: tuple[float, float] = (0.2, 1.0)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    bf16: bool = False  # bf16 autocast: ~1.5-3x faster convolutions on CPUs with bf16 support
    random_state: int = 0
    knn_k: int = 200
    monitor_size: int = 5_000  # images the kNN monitor classifies
    monitor_bank: int = 20_000  # labelled images it votes with (encoding costs ~1/6 of an epoch of 70k)
    device: str = "auto"  # cpu, cuda or auto (cuda when a GPU is visible); the backbone returns on the CPU

    def validate(self) -> None:
        _choice("device", self.device, DEVICES)
        if self.epochs < 1 or self.batch_size < 2:
            raise NolabelError(f"SimCLR needs epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if self.lr <= 0 or self.temperature <= 0:
            raise NolabelError(f"lr and temperature must be positive, got {self.lr} and {self.temperature}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise NolabelError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")


# Adam's learning rate for SCAN heads on frozen features: the default of `train_scan_features`
# without a config, of `nolabel scan --features` and of the `SCAN` estimator. ScanConfig's `lr`
# default (1e-4) is the whole-network one.
SCAN_FEATURES_LR = 1e-3


@dataclass
class ScanConfig:
    """Hyper-parameters of SCAN training (defaults: SCAN's CIFAR settings). The `lr` default, Adam
    1e-4, is for the whole network (`train_scan_network`, `nolabel scan --data`); heads on frozen
    features train with `SCAN_FEATURES_LR` = 1e-3 (`train_scan_features` without a config, `nolabel
    scan --features`, the `SCAN` estimator)."""

    n_clusters: int = 10
    n_heads: int = 10
    entropy_weight: float = 5.0
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-4
    hidden_dim: int = 0
    n_neighbors: int = 20  # neighbours mined per image; each step pairs an image with one of them (or itself)
    random_state: int = 0
    bf16: bool = False
    device: str = "auto"  # cpu, cuda or auto (cuda when a GPU is visible); results come back on the CPU

    def validate(self) -> None:
        _choice("device", self.device, DEVICES)
        if self.n_clusters < 2 or self.n_heads < 1 or self.epochs < 1 or self.batch_size < 2:
            raise NolabelError("SCAN needs n_clusters >= 2, n_heads >= 1, epochs >= 1 and batch_size >= 2, got "
                               f"{self.n_clusters}, {self.n_heads}, {self.epochs}, {self.batch_size}")
        if self.entropy_weight < 0 or self.lr <= 0:
            raise NolabelError(f"entropy_weight must be >= 0 and lr > 0, got {self.entropy_weight}, {self.lr}")
        _at_least("n_neighbors", self.n_neighbors, 1)


@dataclass
class SelfLabelConfig:
    """Hyper-parameters (SCAN's defaults: threshold 0.99, Adam lr 1e-4, class balancing on)."""

    threshold: float = 0.99
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-4
    class_balance: bool = True
    # > 0 adds SCAN's term -entropy_weight * H(mean prediction on the strong views): keeps clusters
    # that have no confident sample yet from being emptied (0: the paper's loss).
    entropy_weight: float = 0.0
    ema_decay: float | None = None  # e.g. 0.999; None: no EMA
    random_state: int = 0
    bf16: bool = False
    device: str = "auto"  # cpu, cuda or auto (cuda when a GPU is visible); results come back on the CPU

    def validate(self) -> None:
        _choice("device", self.device, DEVICES)
        if not 0 < self.threshold < 1:
            raise NolabelError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise NolabelError(f"need epochs >= 1, batch_size >= 2 and lr > 0, got {self.epochs}, "
                               f"{self.batch_size}, {self.lr}")


TURTLE_SELECTIONS = ("loss", "generalization")
TURTLE_INNER_STARTS = ("cold", "warm")


@dataclass
class TurtleConfig:
    """Hyper-parameters of TURTLE (`nolabel.cluster.turtle`; Gadetsky, Jiang & Brbic, ICML 2024).
    Defaults: the paper's gamma, inner steps, batch size, outer learning rate and cold-started inner
    classifiers; the inner learning rate, steps and restarts are this project's, measured in
    benchmarks/fashion_mnist.py (see BENCHMARKS.md, "TURTLE: what was tried")."""

    n_clusters: int = 10
    gamma: float = 10.0  # weight of the spaces' mean-labelling entropies (keeps clusters from collapsing)
    inner_steps: int = 10  # Adam steps of each space's linear classifier per outer step
    inner_lr: float = 1e-2  # Adam; the paper's 1e-3 with features scaled here fits too little in 10 steps
    outer_lr: float = 1e-3  # Adam, the task encoder
    steps: int = 1500  # outer steps (the paper's T), each on a batch drawn at random
    batch_size: int = 10_000  # clipped to the number of images
    inner_start: str = "cold"  # cold: fresh classifiers every outer step (the paper's); warm: kept from the last
    n_restarts: int = 3  # independent runs; the best by `selection` (no label) is kept
    selection: str = "loss"  # loss: the lowest TURTLE loss over all images; generalization: nolabel.select's
    random_state: int = 0
    device: str = "auto"  # cpu, cuda or auto (cuda when a GPU is visible); results come back on the CPU

    def validate(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("turtle.selection", self.selection, TURTLE_SELECTIONS)
        _choice("turtle.inner_start", self.inner_start, TURTLE_INNER_STARTS)
        _at_least("turtle.n_clusters", self.n_clusters, 2)
        for name in ("inner_steps", "steps", "n_restarts"):
            _at_least(f"turtle.{name}", getattr(self, name), 1)
        _at_least("turtle.batch_size", self.batch_size, 2)
        if self.gamma < 0 or self.inner_lr <= 0 or self.outer_lr <= 0:
            raise NolabelError(f"TURTLE needs gamma >= 0 and positive learning rates, got gamma={self.gamma}, "
                               f"inner_lr={self.inner_lr}, outer_lr={self.outer_lr}")


@dataclass
class DataConfig:
    train: str = "fashion-mnist"  # fits PCA, k-means and (protocol "train") the cluster->class mapping
    eval: list[str] = field(default_factory=list)  # further datasets assigned to the clusters
    on_bad_image: str = "skip"

    def validate(self) -> None:
        _choice("data.on_bad_image", self.on_bad_image, ("skip", "fail"))


@dataclass
class ModelConfig:
    name: str = "efficientnet_lite0"
    weights: str | None = None  # a file; published weights are named by `name` (e.g. resnet50.mocov2_800ep)
    trust_checkpoint: bool = False  # allow checkpoints that need full unpickling (runs code from the file)
    download: bool = False  # fetch the published weight named by `name` when it is not cached


@dataclass
class ExtractConfig:
    # EfficientNet-Lite0 at 96 px clusters Fashion-MNIST far better than at 64 (measured), and
    # bf16 autocast doubles CPU throughput at a ~1e-2 relative feature change
    image_size: int | None = 96
    batch_size: int = 128
    dtype: str = "float16"
    precision: str = "bf16"
    # where the forward pass runs; auto: the fastest installed of openvino, onnxruntime, torch that
    # computes in `precision` (nolabel.models.backends)
    backend: str = "auto"
    device: str = "cpu"
    workers: int | None = None

    def validate(self) -> None:
        _choice("extract.dtype", self.dtype, ("float16", "float32"))
        _choice("extract.precision", self.precision, ("fp32", "bf16"))
        _choice("extract.backend", self.backend, ("auto", "torch", "onnxruntime", "openvino"))
        _choice("extract.device", self.device, ("cpu", "cuda", "auto"))
        _at_least("extract.batch_size", self.batch_size, 1)
        if self.image_size is not None:
            _at_least("extract.image_size", self.image_size, 8)


@dataclass
class PCAConfig:
    n_components: int | None = 64  # null keeps every dimension (PCA still centres and rotates)
    whiten: bool = False
    l2_normalize: bool = False
    enabled: bool = True

    def validate(self) -> None:
        if self.n_components is not None:
            _at_least("pca.n_components", self.n_components, 1)


@dataclass
class KMeansConfig:
    n_clusters: int = 10
    n_init: int = 10  # restarts, the lowest inertia kept: k-means ACC varies by +-0.04 between seeds
    max_iter: int = 100
    spherical: bool = False
    random_state: int = 0

    def validate(self) -> None:
        _at_least("kmeans.n_clusters", self.n_clusters, 1)
        _at_least("kmeans.n_init", self.n_init, 1)
        _at_least("kmeans.max_iter", self.max_iter, 1)


@dataclass
class EvaluateConfig:
    mapping: str = "hungarian"
    average_method: str = "arithmetic"

    def validate(self) -> None:
        _choice("evaluate.mapping", self.mapping, ("hungarian", "majority"))
        _choice("evaluate.average_method", self.average_method, ("arithmetic", "geometric", "min", "max"))


@dataclass
class BaselineConfig:
    """The raw-pixel reference row: same clustering on the images' pixels instead of features."""

    enabled: bool = True
    image_size: int | None = 28


@dataclass
class PretrainConfig(SimCLRConfig):
    """SimCLR's hyper-parameters (its `model` is model.name); its backbone feeds extraction."""

    method: str = "simclr"

    def validate(self) -> None:
        _choice("pretrain.method", self.method, ("simclr",))
        super().validate()


@dataclass
class ScanStageConfig(ScanConfig):
    """SCAN's hyper-parameters plus how the run feeds it."""

    mode: str = "features"  # features: heads on the frozen train features | network: backbone + heads
    # features mode: stored features of augmented views that anchors and neighbours sample from.
    # Weak (flip + translation) and strong (4 RandAugment ops + Cutout) views together: 0.744 ACC on
    # Fashion-MNIST against 0.738 for weak views alone, and the heads then meet the strong views
    # self-labeling trains on (benchmarks/fashion_mnist.py).
    weak_views: int = 2
    strong_views: int = 2
    # features mode: PCA dimensions of the heads' inputs (null: the features as they are); wide
    # multi-level transfer features need it (benchmarks/fashion_mnist.py uses 256 on 3,880-d)
    pca: int | None = None

    def validate(self) -> None:
        _choice("scan.mode", self.mode, ("features", "network"))
        if self.pca is not None:
            _at_least("scan.pca", self.pca, 1)
            if self.mode != "features":
                raise NolabelError("scan.pca applies to features mode only (heads on frozen features)")
        _at_least("scan.weak_views", self.weak_views, 0)
        _at_least("scan.strong_views", self.strong_views, 0)
        super().validate()

    def library_config(self) -> ScanConfig:
        return ScanConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ScanConfig)})


@dataclass
class SelfLabelStageConfig(SelfLabelConfig):
    strong_views: int = 2  # features mode: stored strong-view features (4 RandAugment ops + Cutout)

    def validate(self) -> None:
        _at_least("selflabel.strong_views", self.strong_views, 0)
        super().validate()

    def library_config(self) -> SelfLabelConfig:
        return SelfLabelConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SelfLabelConfig)})


@dataclass
class TurtleStageConfig(TurtleConfig):
    """TURTLE's hyper-parameters plus the spaces the run feeds it."""

    # feature spaces besides the run's own (model.name, trained by pretrain when configured), named as
    # select.spaces names them (MODEL or MODEL@SIZE); under select, TURTLE reads select.spaces and these
    spaces: list[str] = field(default_factory=list)
    pca: int | None = None  # each space wider than this to this many PCA dimensions (null: as they are)
    # a multi-level feature (efficientnet_lite0_multilevel) as one space per level rather than one space
    split_levels: bool = False

    def validate(self) -> None:
        if self.pca is not None:
            _at_least("turtle.pca", self.pca, 1)
        super().validate()

    def library_config(self) -> TurtleConfig:
        return TurtleConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TurtleConfig)})


# the label-free scores a choice can be made by (`nolabel.select` defines each)
SELECT_CRITERIA = ("silhouette", "knn_consistency", "generalization", "davies_bouldin", "stability", "consensus",
                   "mean_rank")


@dataclass
class SelectConfig:
    """Choosing without labels: every candidate clustering - each feature space x each number of
    clusters x each method - is built, scored without labels in all the candidate spaces
    (`nolabel.select`), and the best by `criterion` becomes the run's clustering."""

    # candidate feature spaces: model names (`nolabel models`), optionally NAME@SIZE for the image
    # size (default: extract.image_size; raw pixels: baseline.image_size)
    spaces: list[str] = field(
        default_factory=lambda: ["pixels", "efficientnet_lite0", "efficientnet_lite0_multilevel"])
    # the number of clusters: one, a list of candidates, or "auto" (the candidates of k_range)
    n_clusters: list[int] | str = field(default_factory=lambda: [10])
    k_range: list[int] = field(default_factory=lambda: [5, 10, 15, 20, 30])
    # kmeans, scan, selflabel, turtle (one candidate per K over all the spaces together)
    methods: list[str] = field(default_factory=lambda: ["kmeans"])
    # The choice (benchmarks/label_free.py, BENCHMARKS.md "Choosing without labels"): K first, when the
    # candidates have several, as that of the best candidate by `k_criterion` (mean_rank: per score, the
    # share of the other candidates it beats, averaged); then, among the candidates of that K, the best
    # by `criterion` (consensus: mean AMI with the others of that K). On digits and Fashion-MNIST this
    # pair came within 0.008 ACC of the labelled best with K given, where every single score but
    # balance preferred k-means to a better SCAN clustering on Fashion-MNIST.
    criterion: str = "consensus"
    k_criterion: str = "mean_rank"
    score_dims: int = 64  # each space is scored as PCA to this many dimensions, L2-normalised
    sample_size: int = 10_000  # the rows the sampled scores use (`nolabel.select.sample_rows`)
    random_state: int = 0

    def validate(self) -> None:
        if not self.spaces:
            raise NolabelError("select.spaces: name at least one feature space")
        if isinstance(self.n_clusters, str) and self.n_clusters != "auto":
            raise NolabelError(f"select.n_clusters: a number, a list of numbers or auto, got {self.n_clusters!r}")
        for k in ([] if isinstance(self.n_clusters, str) else self.n_clusters) + self.k_range:
            _at_least("select.n_clusters", k, 2)
        for method in self.methods:
            _choice("select.methods", method, ("kmeans", "scan", "selflabel", "turtle"))
        _choice("select.criterion", self.criterion, SELECT_CRITERIA)
        _choice("select.k_criterion", self.k_criterion, SELECT_CRITERIA)
        _at_least("select.score_dims", self.score_dims, 2)
        _at_least("select.sample_size", self.sample_size, 100)

    def candidate_ks(self) -> list[int]:
        return sorted(set(self.k_range if self.n_clusters == "auto" else self.n_clusters))


@dataclass
class RunConfig:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    pca: PCAConfig = field(default_factory=PCAConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    # optional: train the backbone first (its `model` is model.name), with SimCLR or DeepCluster
    pretrain: PretrainConfig | None = None
    deepcluster: DeepClusterConfig | None = None
    # optional: SCAN on the train features, then self-labeling (needs scan)
    scan: ScanStageConfig | None = None
    selflabel: SelfLabelStageConfig | None = None
    # optional: TURTLE over the run's feature space and turtle.spaces (then self-labeling, with selflabel)
    turtle: TurtleStageConfig | None = None
    # optional: candidates over feature spaces, numbers of clusters and methods, chosen without labels
    select: SelectConfig | None = None
    report: bool = True

    def validate(self) -> "RunConfig":
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise NolabelError(f"name: {self.name!r} is not usable as a folder name")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate()
        if self.pretrain is not None and self.deepcluster is not None:
            raise NolabelError("pretrain and deepcluster both train the backbone: keep one of them")
        if self.selflabel is not None and self.scan is None and self.turtle is None:
            raise NolabelError("selflabel starts from SCAN's or TURTLE's result: add a scan or turtle section")
        if self.turtle is not None and self.select is None and self.model.name in self.turtle.spaces:
            raise NolabelError(f"turtle.spaces: {self.model.name} is the run's own space, which TURTLE always reads")
        if self.select is not None:
            methods = set(self.select.methods)
            if "selflabel" in methods and not methods & {"scan", "turtle"}:
                raise NolabelError("select.methods: selflabel starts from SCAN's or TURTLE's result: add scan or "
                                   "turtle")
            if "turtle" in methods and self.turtle is None:
                raise NolabelError("select.methods turtle: add a turtle section (its settings apply to every K)")
            if "scan" in methods and (self.scan is None or self.scan.mode != "features"):
                raise NolabelError("select.methods scan/selflabel train heads on each space's frozen features: "
                                   "add a scan section in features mode (its settings apply to every space)")
            if (self.pretrain or self.deepcluster) is not None:
                raise NolabelError("select compares given feature spaces; train a backbone in its own run first")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# keys of earlier versions -> their names now
RENAMED = {"k": "n_clusters", "seed": "random_state", "mine_neighbors": "n_neighbors", "num_neighbors": "n_neighbors",
           "epochs": "steps"}  # TURTLE counts outer steps, as its paper does


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults, then the YAML file (if any), then each `key.sub=value` override, validated."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise NolabelError(f"{path}: configuration file not found") from None
        except yaml.YAMLError as e:
            raise NolabelError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise NolabelError(f"{path}: a configuration must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NolabelError(f"--set {item!r}: expected key=value, e.g. kmeans.n_clusters=20")
        _set_path(raw, key.strip().split("."), yaml.safe_load(value) if value.strip() else None)
    return _build(RunConfig, raw, "").validate()


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def _set_path(raw: dict, keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nested = raw.setdefault(k, {})
        if not isinstance(nested, dict):
            raise NolabelError(f"--set {'.'.join(keys)}: {k} is not a section")
        raw = nested
    raw[keys[-1]] = value


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise NolabelError(f"{where or 'configuration'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    renamed = [f"{k} is now {RENAMED[k]}" for k in unknown if RENAMED.get(k) in known]
    if renamed:
        raise NolabelError(f"{where + ': ' if where else ''}{'; '.join(renamed)} (one name per concept across "
                           "code, configuration and command line)")
    if unknown:
        raise NolabelError(
            f"{where + ': ' if where else ''}unknown key(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], value, key)
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value if value is not None else {}, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for inner in options[:-1]:  # the first type the value fits, in the order the hint names them
            try:
                return _coerce(inner, value, key)
            except NolabelError:
                continue
        return _coerce(options[-1], value, key)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_coerce(args[0], v, key) for v in items]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise NolabelError(f"{key}: expected a list, got {value!r}")
        types_ = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(types_) != len(value):
            raise NolabelError(f"{key}: expected {len(types_)} values, got {len(value)}")
        return tuple(_coerce(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(types_, value)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise NolabelError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise NolabelError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def _at_least(key: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise NolabelError(f"{key}: must be at least {minimum}, got {value}")
