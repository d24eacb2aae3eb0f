"""SimCLR (Chen et al. 2020): the pretext step of SCAN, trainable where no published weights exist.

Two augmented views of every image go through the backbone and a projection MLP; the NT-Xent loss
pulls the two views of an image together and pushes the other 2B - 2 views of the batch away:

    loss = mean over the 2B views i of  -log( exp(s(i, j(i)) / T) / sum_{k != i} exp(s(i, k) / T) )

with s the cosine similarity and j(i) the other view of i's image. SGD with momentum, cosine
learning-rate schedule per step, one checkpoint per epoch (resumable), and a weighted-kNN monitor
each epoch when labels are known (never used for training).

Outputs in `out_dir`:
- `backbone.pt`: nolabel checkpoint format (`create(model, weights=out_dir / "backbone.pt")` and
  `nolabel extract --model MODEL --weights DIR/backbone.pt` load it), projection head in `heads`;
- `state.pt`: the resumable training state; `history.json`: loss, lr, kNN accuracy per epoch.

Under torchrun each process takes its slice of every batch and DistributedDataParallel averages the
gradients; negatives are the process's own views (no all-gather), which keeps the loss local.
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
from ..config import SimCLRConfig
from ..errors import NolabelError
from ..io import write_json
from ..training import (TrainingState, begin_training, cosine_lr, encode, network_input, progress, seeded,
                        set_lr, training_inputs, wrap_distributed)


class ProjectionHead(nn.Module):
    """SimCLR's projection MLP: Linear -> BN -> ReLU -> Linear, (B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent over a batch: z1, z2 (B, D) projections of the two views of the same B images."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    b = len(z1)
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
    positives = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, positives)


def weighted_knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor,
                         n_classes: int, k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN classifier on cosine similarity (Wu et al. 2018, the usual SSL monitor).

    Each query's k most similar training features vote for their label with weight exp(s / T).
    Returns predicted labels (Q,).
    """
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, len(train))
    preds = []
    for start in range(0, len(query), chunk):
        q = F.normalize(query[start:start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(q), n_classes).scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


@dataclass
class SimCLRResult:
    backbone: nn.Module
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def train_simclr(images: np.ndarray, out_dir: str | Path, config: SimCLRConfig | None = None,
                 labels: np.ndarray | None = None, show_progress: bool = True) -> SimCLRResult:
    """Train `config.model` from scratch with SimCLR on uint8 images (N, H, W) or (N, H, W, 3).

    Resumes from `out_dir/state.pt` when it exists (the finished epochs are skipped; a finished run
    returns at once). `labels` (N,), -1 where unknown, only feed the kNN monitor.
    """
    config = config or SimCLRConfig()
    config.validate()
    with seeded(config.random_state, config.device):  # initialisation and training; the caller's RNG state is kept
        return _train_simclr(images, out_dir, config, labels, show_progress)


def _train_simclr(images: np.ndarray, out_dir: str | Path, config: SimCLRConfig, labels: np.ndarray | None,
                  show_progress: bool) -> SimCLRResult:
    from ..models import create, save_checkpoint

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    if n < config.batch_size:
        raise NolabelError(f"{n} images are fewer than one batch of {config.batch_size}; lower --batch-size")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.random_state)  # the global RNG: seeded by train_simclr
    backbone = create(config.model, pretrained=False)
    size = config.image_size or backbone.input_size
    head = ProjectionHead(backbone.feature_dim, backbone.feature_dim, config.projection_dim)
    # On the device before the optimizer exists, so a resumed optimizer state lands there too.
    device = distributed.resolve_device(config.device)
    backbone.to(device, memory_format=torch.channels_last)
    head.to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    state_file = TrainingState(out_dir / "state.pt", training_inputs(config, images))
    start_epoch, history = state_file.resume({"backbone": backbone, "head": head}, optimizer, generator)

    augment = SimCLRAugment(size, scale=config.crop_scale, brightness=config.jitter[0], contrast=config.jitter[1],
                            saturation=config.jitter[2], hue=config.jitter[3], jitter_p=config.jitter_p,
                            grayscale_p=config.grayscale_p)
    prepare = network_input(backbone, size)
    monitor = _KnnMonitor(images, labels, config, prepare) if labels is not None else None
    model = wrap_distributed(nn.Sequential(backbone, head))
    steps_per_epoch = n // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    local = distributed.shard(config.batch_size)
    checkpoint = out_dir / "backbone.pt"

    for epoch in range(start_epoch, config.epochs):
        model.train()
        epoch_start = time.perf_counter()
        order = torch.randperm(n, generator=generator)
        losses = []
        bar = progress(range(steps_per_epoch), total=steps_per_epoch, desc=f"simclr {epoch + 1}/{config.epochs}",
                       enabled=show_progress)
        for step in bar:
            lr = cosine_lr(config.lr, epoch * steps_per_epoch + step, total_steps,
                           round(config.warmup_epochs * steps_per_epoch))
            set_lr(optimizer, lr)
            batch = order[step * config.batch_size:(step + 1) * config.batch_size][local.start:local.stop]
            x = to_float_images(images[batch.numpy()])
            views = torch.cat([prepare(augment(x, generator)), prepare(augment(x, generator))])
            views = views.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                z = model(views)
            z1, z2 = z.float().chunk(2)
            loss = nt_xent_loss(z1, z2, config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.3f}")
        epoch_log: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": lr,
                                  "seconds": time.perf_counter() - epoch_start}
        if monitor is not None and distributed.is_main():
            epoch_log["knn_acc"] = monitor(backbone)
        history.append(epoch_log)
        if distributed.is_main():
            line = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in epoch_log.items())
            print(f"simclr: {line}", flush=True)
            save_checkpoint(backbone, checkpoint, heads={"projection": head},
                            meta={"method": "simclr", "epoch": epoch + 1, "config": _json_config(config)})
            write_json(out_dir / "history.json", history)
        state_file.save(epoch + 1, {"backbone": backbone, "head": head}, optimizer, generator, history,
                        config=_json_config(config))
        distributed.barrier()
    if not checkpoint.exists() and distributed.is_main():  # resumed a finished run whose checkpoint was removed
        save_checkpoint(backbone, checkpoint, heads={"projection": head},
                        meta={"method": "simclr", "epoch": config.epochs, "config": _json_config(config)})
    backbone.to("cpu").eval()
    head.to("cpu")
    return SimCLRResult(backbone, checkpoint, history, time.perf_counter() - started)


def _json_config(config: SimCLRConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


class _KnnMonitor:
    """Weighted-kNN accuracy of the backbone's features: a fixed random `monitor_size` subset of the
    labelled images is classified against `monitor_bank` other labelled images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: SimCLRConfig, prepare):
        labelled = np.flatnonzero(np.asarray(labels) >= 0)
        rng = np.random.default_rng(config.random_state)
        rng.shuffle(labelled)
        n_query = min(config.monitor_size, len(labelled) // 2)
        self.query = np.sort(labelled[:n_query])
        self.bank = np.sort(labelled[n_query:n_query + config.monitor_bank])
        self.images, self.labels = images, np.asarray(labels)
        self.n_classes = int(self.labels.max()) + 1
        self.k, self.prepare, self.bf16 = config.knn_k, prepare, config.bf16

    def __call__(self, backbone: nn.Module) -> float | None:
        if len(self.query) == 0:
            return None
        bank = torch.from_numpy(encode(backbone, self.images[self.bank], self.prepare, bf16=self.bf16))
        query = torch.from_numpy(encode(backbone, self.images[self.query], self.prepare, bf16=self.bf16))
        pred = weighted_knn_predict(bank, torch.from_numpy(self.labels[self.bank]), query, self.n_classes, self.k)
        return float((pred.numpy() == self.labels[self.query]).mean())


def extract_features(backbone: nn.Module, images: np.ndarray, image_size: int | None = None, batch_size: int = 512,
                     bf16: bool = False, show_progress: bool = False, augment=None,
                     generator: torch.Generator | None = None, forward=None) -> np.ndarray:
    """Backbone features (N, D) float32 of uint8 images, eval mode: of the images themselves, or of
    one random view of each when `augment` (float (B, C, H, W) in [0, 1], generator -> same) is given.
    `forward`: a `nolabel.models.backends.Forward` of this backbone to run instead of the module
    (it brings its own precision; `bf16` is then unused)."""
    prepare = network_input(backbone, image_size or backbone.input_size)
    if augment is not None:
        plain = prepare

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return plain(augment(x, generator))
    if forward is not None:
        return encode(lambda x: torch.from_numpy(forward(x)), images, prepare, batch_size, False, show_progress)
    return encode(backbone, images, prepare, batch_size, bf16, show_progress)


def pretrain_simclr(data: str, out_dir: str | Path, config: SimCLRConfig | None = None, force: bool = False,
                    show_progress: bool = True) -> SimCLRResult:
    """The pretext stage from a dataset spec: load it, train, return the result. Labels, where the
    dataset has them, feed the monitor only.

    `out_dir`'s record (`nolabel.record`) holds the images' fingerprint and the configuration: a
    finished training with the same ones returns at once, an unfinished one resumes, and one made
    from other images or settings is replaced only with `force`."""
    from ..data import load
    from ..models import create as create_model
    from ..training import images_in_memory

    config = config or SimCLRConfig()
    config.validate()  # bad settings, or a missing GPU, fail before anything is replaced
    distributed.resolve_device(config.device)
    out = Path(out_dir)
    dataset = load(data)
    size = config.image_size or create_model(config.model, pretrained=False).input_size
    images = images_in_memory(dataset, size)
    inputs = training_inputs(config, images)
    begin_training(out, "pretrain", inputs, force, ("state.pt", "backbone.pt", "history.json"), "a SimCLR training")
    labels = dataset.labels if (dataset.labels >= 0).any() else None
    result = train_simclr(images, out, config, labels=labels, show_progress=show_progress)
    record.finish(out, "pretrain", inputs, seconds=round(result.seconds, 2))
    return result
