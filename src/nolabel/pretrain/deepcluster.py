"""DeepCluster (Caron et al. 2018) and DeepCluster-v2 (Caron et al. 2020, in the SwAV paper).

Both alternate two steps, once per epoch: cluster the network's own representation with k-means,
then train the network for one epoch to predict those cluster assignments.

**v1** (`version="v1"`), as the 2018 paper describes it:

1. features of every image, network in eval mode, deterministic input (no augmentation);
2. PCA to `min(pca_dim, D, N)` dimensions with whitening, then L2 normalisation of each row
   (the paper's 256 assumes a 4096-d AlexNet/VGG feature; a compact network such as `cnn28` has
   D = 128, so its PCA keeps all 128 dimensions and only decorrelates and whitens them: the
   dimensions used are recorded as `pca_dim` in every epoch's history; whitening every dimension
   also amplifies the weakest ones, and on Fashion-MNIST `pca_dim=32` clustered better);
3. k-means with `k` clusters (nolabel's exact `KMeans`; empty clusters are re-seeded by splitting
   the largest during the fit, and any still empty at the end are left out of the sampling);
4. a fresh classifier layer `ReLU -> Linear(D, k)` (weights N(0, 0.01), zero bias) on top of the
   backbone, re-initialised every epoch because cluster ids have no meaning across epochs;
5. one epoch of SGD on the cross-entropy of the assignments, over images drawn *uniformly over the
   non-empty clusters* (`uniform_cluster_sample`), each augmented (random resized crop + flip).
   Uniform sampling is what stops a large cluster from swallowing the rest (the trivial solution).

**v2** (`version="v2"`): a projection head maps backbone features to L2-normalised embeddings
(`projection_dim`); a memory bank holds one embedding per image. Each epoch starts with spherical
k-means on the bank, once per head (`heads`, different seeds), whose centroids become that head's
*frozen* prototypes; the loss is the cross-entropy of `embedding @ prototypes.T / temperature`
against the head's assignment, averaged over heads and over two augmented views. The embeddings of
the first view refresh the bank as training passes over it, so the next epoch clusters the network's
current embeddings at no extra forward pass (rows an `epoch_size` < N leaves unvisited keep older
ones). The bank starts from one pass without augmentation, BatchNorm in training mode.

Both log, per epoch, the NMI (arithmetic average) between this epoch's assignments and the previous
epoch's (`nmi_vs_previous_epoch`, the stability curve of the v1 paper's Fig. 2; v2: head 0), the
clusters left empty (`empty_clusters`; v2: summed over heads) and, when labels are given,
ACC/NMI/AMI/ARI of the epoch's own k-cluster assignments against them (`vs_labels`, never used for
training; with k > classes, ACC maps unmatched clusters to their majority class). A checkpoint is
written after every epoch; a run resumes from it.

Under torchrun the features are computed in shards and all-reduced, k-means all-reduces its
sums and counts (bit-identical centroids for any number of processes), each process trains on its
slice of every batch (DistributedDataParallel), and v2's bank rows are all-reduced at the epoch end.

Outputs in `out_dir`: `backbone.pt` (nolabel checkpoint: `nolabel extract --model MODEL --weights
DIR/backbone.pt` loads it; heads: v1 the last classifier layer, v2 the projection head and
prototypes), `state.pt` (resumable state), `history.json`, `assignments.npy` (v1 (N,), v2
(heads, N): the last epoch's clustering).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed, record
from ..augment import SimCLRAugment, to_float_images
from ..cluster.kmeans import KMeans
from ..cluster.pca import PCA
from ..config import DeepClusterConfig
from ..errors import NolabelError
from ..io import save_npy, write_json
from ..metrics import evaluate, nmi
from ..training import (TrainingState, begin_training, cosine_lr, encode, network_input, progress, seeded,
                        set_lr, training_inputs, wrap_distributed)

# The classifier layer's initial weights, N(0, TOP_LAYER_STD^2): small, so a fresh layer starts near
# uniform predictions over the new clusters.
TOP_LAYER_STD = 0.01


@dataclass
class DeepClusterResult:
    backbone: nn.Module
    checkpoint: Path
    assignments: np.ndarray  # the last epoch's clustering: v1 (N,), v2 (heads, N)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- the clustering step

def pca_dimensions(pca_dim: int, n: int, d: int) -> int:
    """Components v1's PCA keeps: the asked `pca_dim`, clamped to the feature dimension D and to N."""
    return min(pca_dim, d, n)


def cluster_features(features: np.ndarray, k: int, pca_dim: int = 256, max_iter: int = 20, n_init: int = 1,
                     seed: int = 0) -> np.ndarray:
    """v1's clustering step: PCA (whitened) to `pca_dimensions(pca_dim, N, D)`, L2 normalisation,
    k-means. features (N, D) -> assignments int64 (N,). Also the evaluation protocol's final step."""
    n, d = features.shape
    reduced = PCA(pca_dimensions(pca_dim, n, d), whiten=True, l2_normalize=True).fit_transform(features)
    return KMeans(k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(reduced).labels_


def cluster_memory_bank(bank: np.ndarray, k: int, heads: int, max_iter: int = 10,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """v2's clustering step: spherical k-means on the bank (N, d), once per head with its own seed.

    Under torchrun every process passes the full bank; `KMeans` shares the rows out and all-reduces
    the sums and counts, so the result is bit-identical to one process's.
    Returns (prototypes float32 (heads, k, d), L2-normalised; assignments int64 (heads, N)).
    """
    prototypes, assignments = [], []
    for head in range(heads):
        km = KMeans(k, n_init=1, max_iter=max_iter, spherical=True, random_state=seed + head).fit(bank)
        prototypes.append(km.cluster_centers_)
        assignments.append(km.labels_)
    return np.stack(prototypes), np.stack(assignments)


def gather_rows(local: torch.Tensor, rows: np.ndarray | range, n: int) -> torch.Tensor:
    """Every process's rows into one (n, ...) tensor in every process (all-reduce of zero-filled copies)."""
    full = torch.zeros((n, *local.shape[1:]), dtype=local.dtype)
    full[torch.as_tensor(np.asarray(rows), dtype=torch.int64)] = local
    return distributed.all_reduce_sum(full)


def uniform_cluster_sample(assignments: np.ndarray, n_samples: int, generator: torch.Generator) -> np.ndarray:
    """Indices of `n_samples` images drawn uniformly over the non-empty clusters, shuffled.

    Every non-empty cluster gets n_samples // (non-empty clusters) draws, the remainder going one
    each to randomly chosen clusters, so counts differ by at most one. Within a cluster, draws go
    through random permutations of its members, one after another, so a cluster smaller than its
    share repeats every member equally often (to within one) and a larger one repeats none.
    """
    assignments = np.asarray(assignments)
    clusters = np.unique(assignments)
    members = np.argsort(assignments, kind="stable")
    starts = np.searchsorted(assignments[members], clusters)
    sizes = np.bincount(assignments)[clusters]
    per_cluster = np.full(len(clusters), n_samples // len(clusters))
    extra = torch.randperm(len(clusters), generator=generator)[:n_samples % len(clusters)].numpy()
    per_cluster[extra] += 1
    picked = []
    for start, size, count in zip(starts, sizes, per_cluster):
        if count == 0:
            continue
        repeats = -(-count // size)  # whole permutations of the cluster, then truncated
        order = torch.cat([torch.randperm(int(size), generator=generator) for _ in range(repeats)])[:count]
        picked.append(members[start + order.numpy()])
    sample = np.concatenate(picked)
    return sample[torch.randperm(len(sample), generator=generator).numpy()]


# --------------------------------------------------------------------------- the networks

class _Classifier(nn.Module):
    """v1: backbone -> ReLU -> Linear(D, k) (the ReLU the paper removes for clustering, kept for training)."""

    def __init__(self, backbone: nn.Module, top_layer: nn.Linear):
        super().__init__()
        self.backbone, self.top_layer = backbone, top_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top_layer(F.relu(self.backbone(x)))


class _Embedder(nn.Module):
    """v2: backbone -> projection head -> L2-normalised embedding."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(x)).float(), dim=1)


def _fresh_top_layer(in_dim: int, k: int, generator: torch.Generator) -> nn.Linear:
    layer = nn.Linear(in_dim, k)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(k, in_dim, generator=generator) * TOP_LAYER_STD)
        layer.bias.zero_()
    return layer


def _encode_sharded(network, images: np.ndarray, prepare, bf16: bool, show_progress: bool) -> np.ndarray:
    """network over all images (in eval mode if it is a module), each process encoding its share,
    all-reduced -> (N, D)."""
    rows = distributed.shard(len(images))
    local = encode(network, images[rows.start:rows.stop], prepare, bf16=bf16, show_progress=show_progress)
    return gather_rows(torch.from_numpy(local), rows, len(images)).numpy()


# --------------------------------------------------------------------------- training

def train_deepcluster(images: np.ndarray, out_dir: str | Path, config: DeepClusterConfig | None = None,
                      labels: np.ndarray | None = None, show_progress: bool = True,
                      max_seconds: float | None = None, force: bool = False) -> DeepClusterResult:
    """Train `config.model` from scratch with DeepCluster v1 or v2 on uint8 images (N, H, W[, 3]).

    `out_dir`'s record holds the images' fingerprint and the configuration: a training begun with
    the same ones resumes from `out_dir/state.pt` (a finished one returns at once); one made from
    others is replaced only with `force`. `labels` (N,), -1 where unknown, only feed the per-epoch
    metrics, never the training. `max_seconds`: do not start an epoch that would end (judging by the
    last epoch's duration) more than `max_seconds` after this call began; a later call resumes.
    """
    config = (config or DeepClusterConfig()).resolved()
    with seeded(config.random_state):  # initialisation and training (dropout); the caller's RNG state is kept
        return _train_deepcluster(images, out_dir, config, labels, show_progress, max_seconds, force)


def _train_deepcluster(images: np.ndarray, out_dir: str | Path, config: DeepClusterConfig, labels: np.ndarray | None,
                       show_progress: bool, max_seconds: float | None, force: bool) -> DeepClusterResult:
    from ..models import create, save_checkpoint
    from .simclr import ProjectionHead

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    if n < max(config.batch_size, config.n_clusters):
        raise NolabelError(f"{n} images are fewer than one batch ({config.batch_size}) or than k "
                           f"({config.n_clusters}); lower --batch-size or --k")
    started = time.perf_counter()
    distributed.init()
    generator = torch.Generator().manual_seed(config.random_state)  # the global RNG: seeded by train_deepcluster
    backbone = create(config.model, pretrained=False)
    backbone.to(memory_format=torch.channels_last)
    size = config.image_size or backbone.input_size
    prepare = network_input(backbone, size)
    augment = SimCLRAugment(size, scale=config.crop_scale, flip_p=config.flip_p, brightness=config.jitter[0],
                            contrast=config.jitter[1], saturation=config.jitter[2], hue=config.jitter[3],
                            jitter_p=config.jitter_p, grayscale_p=config.grayscale_p)
    v2 = config.version == "v2"
    modules: dict[str, nn.Module] = {"backbone": backbone}
    if v2:
        modules["head"] = ProjectionHead(backbone.feature_dim, backbone.feature_dim, config.projection_dim)
        embedder = _Embedder(backbone, modules["head"])
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    inputs = training_inputs(config, images)
    begin_training(out_dir, "deepcluster", inputs, force,
                   ("state.pt", "backbone.pt", "history.json", "assignments.npy"), "a DeepCluster training")
    state_file = TrainingState(out_dir / "state.pt", inputs)
    history: list[dict[str, Any]] = []
    start_epoch, assignments, previous, bank, top_layer = 0, None, None, None, None
    state = state_file.load()
    if state is not None:
        TrainingState.restore(state, modules, optimizer, generator)
        start_epoch, history = state["epoch"], list(state["history"])
        assignments = state["assignments"].numpy()
        previous = assignments[0] if v2 else assignments
        bank = state.get("bank")
    if v2 and bank is None:
        bank = torch.from_numpy(_initial_bank(embedder, images, prepare, config.bf16, show_progress))

    epoch_size = min(config.epoch_size or n, n)
    steps_per_epoch = epoch_size // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    local = distributed.shard(config.batch_size)
    checkpoint = out_dir / "backbone.pt"
    known = None if labels is None else np.flatnonzero(np.asarray(labels) >= 0)

    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        if max_seconds is not None and history and \
                epoch_start - started + history[-1]["seconds"] > max_seconds:
            break
        epoch_log: dict[str, Any] = {"epoch": epoch + 1}
        # 1. Cluster the current representation.
        if v2:
            prototypes, assignments = cluster_memory_bank(bank.numpy(), config.n_clusters, config.heads,
                                                          config.kmeans_iter,
                                                          seed=config.random_state * 1000 + epoch * config.heads)
            prototypes = torch.from_numpy(prototypes)
            targets = torch.from_numpy(assignments)
            current = assignments[0]
            order = torch.randperm(n, generator=generator)[:epoch_size]
            epoch_log["empty_clusters"] = int(sum(config.n_clusters - len(np.unique(a)) for a in assignments))
        else:
            features = _encode_sharded(backbone, images, prepare, config.bf16, show_progress)
            epoch_log["pca_dim"] = pca_dimensions(config.pca_dim, n, features.shape[1])
            assignments = cluster_features(features, config.n_clusters, config.pca_dim, config.kmeans_iter,
                                           seed=config.random_state * 1000 + epoch)
            current = assignments
            targets = torch.from_numpy(assignments)
            epoch_log["empty_clusters"] = int(config.n_clusters - len(np.unique(assignments)))
            order = torch.from_numpy(uniform_cluster_sample(assignments, epoch_size, generator))
            top_layer = _fresh_top_layer(backbone.feature_dim, config.n_clusters, generator)
            top_optimizer = torch.optim.SGD(top_layer.parameters(), lr=config.lr, momentum=config.momentum,
                                            weight_decay=config.weight_decay)
        epoch_log["cluster_seconds"] = time.perf_counter() - epoch_start
        epoch_log["nmi_vs_previous_epoch"] = None if previous is None else nmi(previous, current)
        if known is not None and len(known):
            scores = evaluate(np.asarray(labels)[known], current[known])
            epoch_log["vs_labels"] = {key: scores[key] for key in ("acc", "acc_majority", "nmi", "ami", "ari")}
        previous = current

        # 2. One epoch of training on the assignments.
        model = wrap_distributed(embedder if v2 else _Classifier(backbone, top_layer))
        model.train()
        fresh_rows, fresh_embeddings = [], []
        losses = []
        bar = progress(range(steps_per_epoch), total=steps_per_epoch,
                       desc=f"deepcluster-{config.version} {epoch + 1}/{config.epochs}", enabled=show_progress)
        for step in bar:
            global_step = epoch * steps_per_epoch + step
            lr = config.lr if config.schedule == "constant" else cosine_lr(
                config.lr, global_step, total_steps, round(config.warmup_epochs * steps_per_epoch))
            set_lr(optimizer, lr)
            batch = order[step * config.batch_size:(step + 1) * config.batch_size][local.start:local.stop]
            x = to_float_images(images[batch.numpy()])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                if v2:
                    z = model(torch.cat([prepare(augment(x, generator)), prepare(augment(x, generator))]))
                else:
                    logits = model(prepare(augment(x, generator)))
            if v2:
                logits = torch.einsum("bd,hkd->hbk", z, prototypes) / config.temperature
                y = targets[:, batch].repeat(1, 2)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
                fresh_rows.append(batch)
                fresh_embeddings.append(z[:len(batch)].detach())
            else:
                loss = F.cross_entropy(logits.float(), targets[batch])
                set_lr(top_optimizer, lr)
                top_optimizer.zero_grad(set_to_none=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if not v2:
                top_optimizer.step()
            losses.append(loss.item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.4f}")
        if v2:
            bank = _refresh_bank(bank, fresh_rows, fresh_embeddings)
        epoch_log.update(loss=float(np.mean(losses)), lr=lr, seconds=time.perf_counter() - epoch_start)
        history.append(epoch_log)

        # 3. Checkpoint.
        heads = ({"projection": modules["head"], "prototypes": _Prototypes(prototypes)} if v2
                 else {"top_layer": top_layer})
        extra = {"assignments": torch.from_numpy(np.asarray(assignments)), "config": _json_config(config)}
        if v2:
            extra["bank"] = bank
        if distributed.is_main():
            print(f"deepcluster-{config.version}: {_format_epoch(epoch_log)}", flush=True)
            save_checkpoint(backbone, checkpoint, heads=heads,
                            meta={"method": f"deepcluster-{config.version}", "epoch": epoch + 1,
                                  "config": _json_config(config)})
            save_npy(out_dir / "assignments.npy", np.asarray(assignments))
            write_json(out_dir / "history.json", history)
        state_file.save(epoch + 1, modules, optimizer, generator, history, **extra)
        distributed.barrier()
    if not checkpoint.exists() and distributed.is_main():  # a finished run resumed after its checkpoint was removed
        save_checkpoint(backbone, checkpoint, meta={"method": f"deepcluster-{config.version}",
                                                    "epoch": config.epochs, "config": _json_config(config)})
    backbone.eval()
    if len(history) == config.epochs:
        record.finish(out_dir, "deepcluster", inputs)
    return DeepClusterResult(backbone, checkpoint, np.asarray(assignments), history, time.perf_counter() - started)


def _initial_bank(embedder: nn.Module, images: np.ndarray, prepare, bf16: bool, show_progress: bool) -> np.ndarray:
    """v2's first bank: the embeddings of the unaugmented images with BatchNorm in training mode.

    Training embeds with batch statistics; an untrained network's running statistics are still
    their defaults (mean 0, variance 1), so an eval-mode pass would give embeddings of another
    distribution than the ones that replace them, and the first clusterings would mix the two.
    The pass also moves the running statistics towards the data's, as training would.
    """
    embedder.train()
    return _encode_sharded(lambda x: embedder(x), images, prepare, bf16, show_progress)


class _Prototypes(nn.Module):
    """v2's frozen prototypes (heads, k, d), as a module so they travel in the checkpoint's heads."""

    def __init__(self, prototypes: torch.Tensor):
        super().__init__()
        self.register_buffer("prototypes", prototypes)


def _refresh_bank(bank: torch.Tensor, rows: list[torch.Tensor], embeddings: list[torch.Tensor]) -> torch.Tensor:
    """Write this epoch's embeddings into the bank; under torchrun, every process's rows.

    Rows no batch visited (the last partial batch is dropped) keep their previous embedding.
    """
    rows_t, fresh = torch.cat(rows), torch.cat(embeddings).float()
    written = torch.zeros(len(bank), dtype=torch.float32)
    written[rows_t] = 1.0
    update = torch.zeros_like(bank)
    update[rows_t] = fresh
    distributed.all_reduce_sum(written)
    distributed.all_reduce_sum(update)
    visited = written > 0
    bank = bank.clone()
    bank[visited] = update[visited]
    return bank


def _json_config(config: DeepClusterConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def _format_epoch(epoch_log: dict[str, Any]) -> str:
    parts = []
    for key, value in epoch_log.items():
        if isinstance(value, dict):
            parts.append(f"{key} " + "/".join(f"{k} {v:.3f}" for k, v in value.items()))
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- evaluation

def evaluate_backbone(backbone: nn.Module, images: np.ndarray, labels: np.ndarray, k: int, pca_dim: int = 256,
                      n_init: int = 1, max_iter: int = 50, seed: int = 0, image_size: int | None = None,
                      bf16: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """The evaluation protocol: the trained backbone's eval-mode features -> v1's clustering step
    (whitened PCA, L2, k-means) with `k` clusters -> metrics against the labelled images (label >= 0;
    mappings fitted on the evaluated images themselves, hungarian and majority).

    Returns (assignments int64 (N,), metrics dict of `nolabel.metrics.evaluate`).
    """
    features = _encode_sharded(backbone, images, network_input(backbone, image_size), bf16, show_progress=False)
    assignments = cluster_features(features, k, pca_dim, max_iter=max_iter, n_init=n_init, seed=seed)
    known = np.flatnonzero(np.asarray(labels) >= 0)
    if len(known) == 0:
        raise NolabelError("no image has a label (all are -1): nothing to evaluate against")
    return assignments, evaluate(np.asarray(labels)[known], assignments[known])
