"""SCAN's training loop, shared by heads on frozen features and the whole network on images.

Both modes write `scan.pt` (heads, chosen head, per-head losses; resumable via `scan_state.pt`) and
return a `ScanResult` with the chosen head's probabilities `(N, K)`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import distributed, record
from ...config import SCAN_FEATURES_LR, ScanConfig
from ...errors import NolabelError
from ...training import (TrainingState, cosine_lr, load_result, progress, seeded, set_lr, training_inputs,
                         wrap_distributed)
from .heads import ClusterHeads, ListHead
from .loss import scan_loss, scan_loss_of_probabilities, select_head


@dataclass
class ScanResult:
    """Outcome of SCAN training. `probabilities` (N, K) and `predictions` (N,) are the chosen head's."""

    heads: ClusterHeads
    best_head: int
    head_losses: list[dict[str, float]]
    probabilities: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1)


class FeatureInputs:
    """Frozen features as training inputs: `clean` (N, D) and optional augmented views (V, N, D).

    `batch(idx, augmented, generator, rows)` returns float32 (len(rows), D): a random augmented view
    per row when asked for augmentation and views exist, else the clean features. The random views
    are drawn for all of `idx` - the whole batch, as every process draws it under torchrun - and
    `rows` (default: all) picks this process's part of it.
    """

    def __init__(self, features: np.ndarray, augmented: np.ndarray | None = None):
        if features.ndim != 2:
            raise NolabelError(f"features must be (N, D), got shape {features.shape}")
        if augmented is not None and (augmented.ndim != 3 or augmented.shape[1:] != features.shape):
            raise NolabelError(f"augmented views must be (V, N, D) = (V, {features.shape[0]}, {features.shape[1]}), "
                               f"got shape {augmented.shape}")
        self.features, self.augmented = features, augmented
        self.n, self.dim = features.shape

    def fingerprint(self) -> str:
        return record.array_fingerprint(self.features, self.augmented)

    def batch(self, idx: np.ndarray, augmented: bool, generator: torch.Generator, rows: range | None = None
              ) -> torch.Tensor:
        keep = slice(None) if rows is None else slice(rows.start, rows.stop)
        if augmented and self.augmented is not None:
            views = torch.randint(0, len(self.augmented), (len(idx),), generator=generator).numpy()
            return torch.from_numpy(np.asarray(self.augmented[views[keep], idx[keep]], dtype=np.float32))
        return torch.from_numpy(np.asarray(self.features[idx[keep]], dtype=np.float32))


class ImageInputs:
    """In-memory uint8 images as inputs to a network: `prepare` resizes + normalises a float batch,
    `augment` (float (B, C, H, W) in [0, 1], generator) -> same, applied when asked. Like
    `FeatureInputs.batch`, augmentation is drawn for the whole batch `idx` and `rows` of it are kept
    (under torchrun every process augments the whole batch: its random draws are then those of one
    process)."""

    def __init__(self, images: np.ndarray, prepare: Callable, augment: Callable):
        self.images, self.prepare, self.augment = images, prepare, augment
        self.n = len(images)

    def fingerprint(self) -> str:
        return record.fingerprint({"images": record.array_fingerprint(self.images), "augment": repr(self.augment)})

    def batch(self, idx: np.ndarray, augmented: bool, generator: torch.Generator, rows: range | None = None
              ) -> torch.Tensor:
        from ...augment import to_float_images

        keep = slice(None) if rows is None else slice(rows.start, rows.stop)
        if not augmented:
            return self.prepare(to_float_images(self.images[idx[keep]]))
        return self.prepare(self.augment(to_float_images(self.images[idx]), generator)[keep])


def _predict(model: nn.Module, inputs, n: int, batch_size: int, bf16: bool, head_index: int | None = None,
             sink: Callable[[int, list[np.ndarray]], None] | None = None) -> list[np.ndarray]:
    """Softmax probabilities of every head (or one) over all N clean inputs, eval mode, on the
    model's device: one float32 (N, K) array per head, each filled in place (no second copy).

    sink: instead of keeping them, hand each batch's per-head float32 (B, K) probabilities, in row
    order, to sink(first row, arrays); then nothing is returned (an empty list)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outs: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                idx = np.arange(start, min(n, start + batch_size))
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(inputs.batch(idx, False, None).to(device, non_blocking=True))
                if head_index is not None:
                    logits = [logits[head_index]]
                probs = [F.softmax(l.float(), 1).cpu().numpy() for l in logits]
                if sink is not None:
                    sink(start, probs)
                    continue
                if not outs:
                    outs = [np.empty((n, q.shape[1]), dtype=np.float32) for q in probs]
                for out, q in zip(outs, probs):
                    out[start:start + len(q)] = q
    finally:
        model.train(was_training)
    return outs


# Head selection keeps all heads' (N, K) probabilities in memory while together they take at most
# this much. Beyond it (ImageNet: 10 heads x 1.28M x 1000 float32 = 51 GB) the heads are predicted
# one at a time into a scratch .npy file and scored from it in blocks (`scan_loss_of_probabilities`).
HEAD_SELECTION_IN_MEMORY_BYTES = 2 << 30


def _choose_head(model: nn.Module, heads: ClusterHeads, inputs, n: int, neighbors: np.ndarray,
                 config: ScanConfig, out_dir: Path | None) -> tuple[list[dict[str, float]], int, np.ndarray]:
    """(every head's whole-dataset SCAN loss, the chosen head, its float32 (N, K) probabilities).

    Small enough (`HEAD_SELECTION_IN_MEMORY_BYTES`): one pass predicts every head in memory. Larger:
    one head at a time, written batch by batch to a scratch .npy in `out_dir` (the system's temporary
    folder without one), scored from disk, and deleted unless it is the best so far - at most two
    such files at once, and memory stays within a few GB whatever N. The chosen head's probabilities
    then come back as a read-only memmap of its file, which is unlinked at once where the system
    allows (POSIX): the mapping keeps the data, and the disk space, until the array is dropped.
    Predicting one head at a time costs one pass over the inputs per head; with heads on frozen
    features (ImageNet's setting) only that head runs, so the heads' compute is that of one pass.
    """
    import os
    import tempfile

    batch_size = max(config.batch_size, 512)
    n_heads, k = len(heads.heads), heads.n_clusters
    if n_heads * n * k * 4 <= HEAD_SELECTION_IN_MEMORY_BYTES:
        all_probs = _predict(model, inputs, n, batch_size, config.bf16)
        head_losses = [scan_loss_of_probabilities(p, neighbors, config.entropy_weight) for p in all_probs]
        best = select_head(head_losses)
        return head_losses, best, all_probs[best]

    scratch = out_dir if out_dir is not None else Path(tempfile.gettempdir())
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, k)}
    head_losses: list[dict[str, float]] = []
    kept: Path | None = None
    path: Path | None = None
    try:
        for h in range(n_heads):
            handle, name = tempfile.mkstemp(prefix=f".scan-head{h}-", suffix=".npy", dir=scratch)
            path = Path(name)
            with os.fdopen(handle, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                # frozen features: run this head alone; a backbone with heads runs whole
                single = model is heads
                runner = ListHead(heads.single(h)).train(heads.training) if single else model
                _predict(runner, inputs, n, batch_size, config.bf16, None if single else h,
                         sink=lambda start, probs: probs[0].tofile(f))
            head_losses.append(scan_loss_of_probabilities(np.load(path, mmap_mode="r"), neighbors,
                                                          config.entropy_weight))
            if select_head(head_losses) == h:
                path, kept = kept, path
            if path is not None:
                path.unlink()
            path = None
        probabilities = np.load(kept, mmap_mode="r")
    except BaseException:
        for leftover in (path, kept):
            if leftover is not None:
                leftover.unlink(missing_ok=True)
        raise
    try:
        kept.unlink()
    except OSError:  # Windows cannot delete a mapped file; it stays in the scratch folder
        pass
    return head_losses, select_head(head_losses), probabilities


def _train(model: nn.Module, heads: ClusterHeads, inputs, neighbors: np.ndarray, config: ScanConfig,
           out_dir: Path | None, extra_modules: dict[str, nn.Module], parameters: list,
           show_progress: bool, meta: dict[str, Any]) -> ScanResult:
    config.validate()
    started = time.perf_counter()
    n = inputs.n
    if neighbors.shape[0] != n:
        raise NolabelError(f"{neighbors.shape[0]} neighbour rows for {n} inputs")
    if n < config.batch_size:
        raise NolabelError(f"{n} samples are fewer than one batch of {config.batch_size}; lower the batch size")
    stored = neighbors
    # Candidates: the anchor itself plus its stored neighbours.
    candidates = np.concatenate([np.arange(n)[:, None], stored], axis=1)
    generator = torch.Generator().manual_seed(config.random_state)  # the global RNG: seeded by the caller
    # Before the optimizer exists, so a resumed optimizer state lands on the parameters' device.
    device = distributed.resolve_device(config.device)
    model.to(device)
    optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    modules = {"heads": heads, **extra_modules}
    state_file = None
    if out_dir is not None:
        state_file = TrainingState(out_dir / "scan_state.pt", training_inputs(
            config, stored, modules=modules, inputs=inputs.fingerprint()))
    start_epoch, history = state_file.resume(modules, optimizer, generator) if state_file else (0, [])
    ddp_model = wrap_distributed(model)
    steps = n // config.batch_size
    local = distributed.shard(config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = torch.randperm(n, generator=generator).numpy()
        sums = np.zeros((len(heads.heads), 3))
        bar = progress(range(steps), total=steps, desc=f"scan {epoch + 1}/{config.epochs}", enabled=show_progress)
        for step in bar:
            set_lr(optimizer, cosine_lr(config.lr, epoch * steps + step, steps * config.epochs, final_fraction=0.1))
            # Every process draws the whole batch's randomness and keeps its own rows (`local`), so
            # N processes train on exactly the batches one process would.
            anchors = order[step * config.batch_size:(step + 1) * config.batch_size]
            pick = torch.randint(0, candidates.shape[1], (len(anchors),), generator=generator).numpy()
            partners = candidates[anchors, pick]
            x = torch.cat([inputs.batch(anchors, True, generator, local),
                           inputs.batch(partners, True, generator, local)])
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                outputs = ddp_model(x)
            objective = 0.0
            for h, logits in enumerate(outputs):
                a, b = logits.float().chunk(2)
                loss = scan_loss(a, b, config.entropy_weight, batch_size=len(anchors))
                objective = objective + loss.objective
                sums[h] += [loss.total.item(), loss.consistency.item(), loss.entropy.item()]
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
        mean = sums / max(1, steps)
        best = int(mean[:, 0].argmin())
        history.append({"epoch": epoch + 1, "loss": float(mean[best, 0]), "consistency": float(mean[best, 1]),
                        "entropy": float(mean[best, 2]), "best_head_train": best})
        if state_file is not None:
            state_file.save(epoch + 1, modules, optimizer, generator, history, config=_json(config))
        distributed.barrier()

    # Choose the head by its SCAN loss over the whole dataset, on clean inputs: deterministic, label-free.
    # Streams at ImageNet scale (see _choose_head): all heads' probabilities never sit in memory at once.
    head_losses, best_head, probabilities = _choose_head(model, heads, inputs, n, stored, config, out_dir)
    model.to("cpu")  # the result (heads, and the backbone in network mode) is handed back on the CPU
    result = ScanResult(heads, best_head, head_losses, probabilities, history,
                        seconds=time.perf_counter() - started)
    if out_dir is not None and distributed.is_main():
        result.checkpoint = save_scan(out_dir / "scan.pt", result, config, extra_modules, meta)
    return result


def save_scan(path: Path, result: ScanResult, config: ScanConfig, extra_modules: dict[str, nn.Module],
              meta: dict[str, Any]) -> Path:
    from ...io import atomic_path

    heads = result.heads
    with atomic_path(path) as tmp:
        torch.save({
            "format": "nolabel-scan", "config": _json(config), "best_head": result.best_head,
            "head_losses": result.head_losses, "in_dim": heads.in_dim, "n_clusters": heads.n_clusters,
            "hidden_dim": heads.hidden_dim, "heads": heads.state_dict(),
            "modules": {k: m.state_dict() for k, m in extra_modules.items()}, "meta": meta,
        }, tmp)
    return path


def load_scan(path: str | Path) -> tuple[ClusterHeads, int, dict[str, Any]]:
    """Read `scan.pt`: (heads with weights, chosen head index, the whole saved dict)."""
    saved = load_result(path, "scan", "scan")
    heads = ClusterHeads(saved["in_dim"], saved["n_clusters"], len(saved["head_losses"]), saved["hidden_dim"])
    heads.load_state_dict(saved["heads"])
    return heads, int(saved["best_head"]), saved


def _json(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def train_scan_features(features: np.ndarray, neighbors: np.ndarray, config: ScanConfig | None = None,
                        augmented: np.ndarray | None = None, out_dir: str | Path | None = None,
                        show_progress: bool = True) -> ScanResult:
    """SCAN heads on frozen features.

    features: (N, D) clean features; neighbors: (N, K) int from `mine_neighbors`; augmented:
    optional (V, N, D) features of V augmented views of every image. Resumes from
    `out_dir/scan_state.pt` when present.
    """
    config = config or ScanConfig(lr=SCAN_FEATURES_LR, epochs=100)
    inputs = FeatureInputs(features, augmented)
    with seeded(config.random_state, config.device):  # head initialisation; the caller's RNG state is kept
        heads = ClusterHeads(inputs.dim, config.n_clusters, config.n_heads, config.hidden_dim)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    with seeded(config.random_state, config.device):  # training: what draws from torch's RNG, from the seed again
        return _train(heads, heads, inputs, np.asarray(neighbors), config, out, {}, list(heads.parameters()),
                      show_progress, {"mode": "features"})


class _BackboneWithHeads(nn.Module):
    def __init__(self, backbone: nn.Module, heads: ClusterHeads):
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.heads(self.backbone(x))


def train_scan_network(images: np.ndarray, backbone: nn.Module, neighbors: np.ndarray,
                       config: ScanConfig | None = None, augment: Callable | None = None,
                       image_size: int | None = None, out_dir: str | Path | None = None,
                       show_progress: bool = True) -> ScanResult:
    """SCAN on the whole network: `backbone` (a nolabel `Backbone`, e.g. from SimCLR) + heads, trained
    together on uint8 images (N, H, W[, 3]) with batched augmentation (default StrongAugment).

    The backbone's weights are saved in `scan.pt` under `modules["backbone"]`.
    """
    from ...augment import StrongAugment
    from ...training import network_input

    config = config or ScanConfig()
    size = image_size or backbone.input_size
    inputs = ImageInputs(images, network_input(backbone, size), augment or StrongAugment())
    with seeded(config.random_state, config.device):  # head initialisation; the caller's RNG state is kept
        heads = ClusterHeads(backbone.feature_dim, config.n_clusters, config.n_heads, config.hidden_dim)
    model = _BackboneWithHeads(backbone, heads)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    with seeded(config.random_state, config.device):  # training (e.g. the backbone's dropout) from the seed again
        return _train(model, heads, inputs, np.asarray(neighbors), config, out, {"backbone": backbone},
                      list(model.parameters()), show_progress,
                      {"mode": "network", "model": getattr(backbone, "architecture", getattr(backbone, "name", None))})
