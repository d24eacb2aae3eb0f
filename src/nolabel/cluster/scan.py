"""SCAN clustering (Van Gansbeke et al. 2020, "Learning to Classify Images without Labels").

A clustering head maps an image to a distribution p(x) over K clusters. The loss asks an image and
one of its mined neighbours to agree, and the mean prediction to spread over all clusters:

    loss = -mean_x log <p(x), p(n(x))>  -  entropy_weight * H(mean_x p(x))

where n(x) is drawn per step among x's K stored neighbours and x itself, and H is the entropy (the
batch mean stands in for the dataset mean). Several heads train side by side from the same inputs;
the one with the lowest SCAN loss on the whole dataset (no labels involved) is kept.

Two modes share one training loop:

- `train_scan_features`: heads only, on frozen precomputed features (fast; what ImageNet scale and
  CPUs need). Augmentation comes from optionally precomputed features of augmented views
  `(V, N, D)`: anchors and neighbours each take a random view per step.
- `train_scan_network`: the backbone and the heads together on images, with batched tensor
  augmentation (`nolabel.augment.StrongAugment` by default, as SCAN does).

Both write `scan.pt` (heads, chosen head, per-head losses; resumable via `scan_state.pt`) and
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

from .. import distributed, record
from ..errors import NolabelError
from ..training import (TrainingState, cosine_lr, progress, seeded_generator, set_lr, training_inputs,
                        wrap_distributed)

_EPS = 1e-8


# --------------------------------------------------------------------------- loss

def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each distribution along the last axis; 0 log 0 counts as 0."""
    p = probabilities.clamp_min(_EPS)
    return -(probabilities * p.log()).sum(-1)


@dataclass
class ScanLoss:
    """The SCAN loss of a batch. `total`, `consistency` and `entropy` are the whole batch's values;
    `objective` is what to backpropagate: `total` itself in one process, this process's share of
    it under torchrun (see `scan_loss`)."""

    total: torch.Tensor
    consistency: torch.Tensor
    entropy: torch.Tensor
    objective: torch.Tensor


def scan_loss(anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor, entropy_weight: float = 5.0,
              batch_size: int | None = None) -> ScanLoss:
    """SCAN loss of a batch: anchor and neighbour logits (B, K) -> total, consistency, entropy.

    consistency = -mean_b log <softmax(a_b), softmax(n_b)>; entropy = H(mean_b softmax(a_b));
    total = consistency - entropy_weight * entropy. Gradients flow through both anchor and
    neighbour (SCAN updates both branches).

    Under torchrun each process passes its own rows of a batch of `batch_size` anchors. The mean
    prediction is then summed over all processes (with its gradient), so the entropy is that of the
    whole batch, as one process would compute it; `objective` is world_size x this process's share of
    the consistency sum / batch_size - entropy_weight x entropy, whose gradient averaged by
    DistributedDataParallel equals that of the whole batch's `total`.
    """
    if anchor_logits.shape != neighbor_logits.shape or anchor_logits.ndim != 2:
        raise ValueError(f"expected two (B, K) logits of equal shape, got {tuple(anchor_logits.shape)} "
                         f"and {tuple(neighbor_logits.shape)}")
    n = batch_size or len(anchor_logits)
    world = distributed.world_size()
    p_anchor = F.softmax(anchor_logits.float(), dim=1)
    p_neighbor = F.softmax(neighbor_logits.float(), dim=1)
    agreement = (p_anchor * p_neighbor).sum(1)
    local_sum = -agreement.clamp_min(_EPS).log().sum()
    spread = entropy(distributed.all_reduce_sum_with_grad(p_anchor.sum(0)) / n)
    if world == 1:
        consistency = local_sum / n
        total = consistency - entropy_weight * spread
        return ScanLoss(total, consistency, spread, total)
    consistency = distributed.all_reduce_sum(local_sum.detach().clone()) / n
    return ScanLoss(consistency - entropy_weight * spread.detach(), consistency, spread.detach(),
                    local_sum * (world / n) - entropy_weight * spread)


# Working memory of one chunk of `scan_loss_of_probabilities`: mostly the gathered neighbour rows
# (chunk x M x K in the probabilities' dtype). The work is bound by copying each neighbour's row
# (4 KB per (anchor, neighbour) pair at K = 1000 in float32); a chunk that stays in the CPU's L2
# cache ran 20-25% faster here than 32-128 MB ones (10 anchors at M = 50, K = 1000).
LOSS_CHUNK_BYTES = 2 << 20
# A memory-mapped probabilities file larger than this is scored in row blocks of at most this size
# (two in memory at a time) instead of being paged in whole: one head at ImageNet scale,
# 1.28M x 1000 float32, is 5.1 GB.
LOSS_BLOCK_BYTES = 1 << 30


def scan_loss_of_probabilities(probabilities: np.ndarray | torch.Tensor, neighbors: np.ndarray,
                               entropy_weight: float = 5.0, *, chunk_rows: int | None = None,
                               memory_bytes: int | None = None, block_bytes: int | None = None
                               ) -> dict[str, float]:
    """Deterministic SCAN loss of a whole dataset's predictions, used to choose a head without labels.

    probabilities: (N, K), float32 or float64 (numpy, a memmap, or a tensor); neighbors: (N, M)
    integer. consistency = mean over every anchor x and every one of its M neighbours n of
    -log max(<p(x), p(n)>, 1e-8); entropy = H(mean_x p(x)); total = consistency - entropy_weight *
    entropy. Returns {"total", "consistency", "entropy"}.

    Computed in chunks of `chunk_rows` anchors (default: as many as fit `memory_bytes` of working
    memory, default LOSS_CHUNK_BYTES), never as an (N, M, K) tensor. The probabilities stay in their own dtype; every sum is
    taken in float64 (a product of two float32 is exact in float64), so the result equals the float64
    formula up to float64 rounding. A memmap larger than `block_bytes` (default LOSS_BLOCK_BYTES) is
    read in row blocks of that size, two at a time, and the pages read are released: memory stays
    about 2 x block_bytes + memory_bytes whatever N.
    """
    from ..io import release_pages

    memory_bytes = LOSS_CHUNK_BYTES if memory_bytes is None else memory_bytes
    block_bytes = LOSS_BLOCK_BYTES if block_bytes is None else block_bytes

    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().cpu()
        if probabilities.dtype not in (torch.float32, torch.float64):
            probabilities = probabilities.float()  # float16 / bfloat16: exact in float32
        probabilities = probabilities.numpy()
    p = probabilities if isinstance(probabilities, np.memmap) else np.asarray(probabilities)
    nb = neighbors if isinstance(neighbors, np.memmap) else np.asarray(neighbors)
    if p.ndim != 2 or nb.ndim != 2 or len(nb) != len(p):
        raise NolabelError(f"expected probabilities (N, K) and neighbours (N, M), got shapes {p.shape} and {nb.shape}")
    if not np.issubdtype(nb.dtype, np.integer):
        raise NolabelError(f"neighbours must be integer indices, got {nb.dtype}")
    n, k = p.shape
    m = nb.shape[1]
    if n == 0 or m == 0:
        raise NolabelError(f"no (anchor, neighbour) pair to score: probabilities {p.shape}, neighbours {nb.shape}")
    lowest, highest = nb.min(), nb.max()
    if lowest < 0 or highest >= n:
        raise NolabelError(f"neighbour indices must lie in 0..{n - 1}, got {lowest}..{highest}")
    if chunk_rows is None:
        # per anchor: its M gathered neighbour rows, plus its own row upcast to float64
        chunk_rows = memory_bytes // max(1, m * k * p.itemsize + k * 8)
    chunk_rows = max(1, int(chunk_rows))
    column_sums = np.zeros(k)
    neg_log_sum = 0.0

    def score(subscripts: str, anchors: np.ndarray, partners: np.ndarray) -> float:
        """Sum of -log max(<a, b>, eps) over the pairs of rows `subscripts` pairs up; the dot
        products in float64 (einsum casts the rows as it goes: no float64 copy of a chunk)."""
        dots = np.einsum(subscripts, anchors, partners, dtype=np.float64)
        return -float(np.log(np.maximum(dots, _EPS)).sum())

    if isinstance(p, np.memmap) and p.nbytes > block_bytes:
        column_sums, neg_log_sum = _scan_sums_in_blocks(p, nb, chunk_rows, memory_bytes, block_bytes, score)
    else:
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            anchors = p[start:stop]
            column_sums += anchors.sum(0, dtype=np.float64)
            neg_log_sum += score("ck,cmk->cm", anchors, p[np.asarray(nb[start:stop])])
    release_pages(p)  # a mapped p: what was read stays in the page cache, not in this process
    release_pages(nb)
    consistency = neg_log_sum / (n * m)
    spread = float(entropy(torch.from_numpy(column_sums / n)))
    return {"total": consistency - entropy_weight * spread, "consistency": consistency, "entropy": spread}


def _scan_sums_in_blocks(p: np.memmap, nb: np.ndarray, chunk_rows: int, memory_bytes: int, block_bytes: int,
                         score: Callable[[str, np.ndarray, np.ndarray], float]) -> tuple[np.ndarray, float]:
    """(column sums of p, sum of -log <p(x), p(n)> over all pairs) for a memory-mapped p, reading it
    in row blocks: for each block of anchors, each block of neighbours in turn, with the pairs whose
    neighbour falls in it. Random rows of a mapped file would page it all in (and fault on every
    row); whole blocks are read in order and their pages released (`nolabel.io.release_pages`)."""
    from ..io import release_pages

    n, k = p.shape
    m = nb.shape[1]
    rows = max(1, min(n, block_bytes // (k * p.itemsize)))
    buffers = [np.empty((rows, k), dtype=p.dtype), np.empty((rows, k), dtype=p.dtype)]
    step = max(1, memory_bytes // (k * p.itemsize))
    pairs = max(1, chunk_rows * m // 2)  # a pair gathers two rows, an anchor of the in-memory path M + 1

    def load(buffer: np.ndarray, start: int) -> np.ndarray:
        stop = min(n, start + rows)
        for s in range(start, stop, step):
            e = min(stop, s + step)
            buffer[s - start:e - start] = p[s:e]
            release_pages(p, s, e)
        return buffer[:stop - start]

    column_sums = np.zeros(k)
    neg_log_sum = 0.0
    for a0 in range(0, n, rows):
        anchors = load(buffers[0], a0)
        column_sums += anchors.sum(0, dtype=np.float64)
        block_nb = np.asarray(nb[a0:a0 + len(anchors)]).ravel()
        blocks = block_nb // rows
        for b in np.flatnonzero(np.bincount(blocks)):  # only the blocks these anchors' neighbours lie in
            b0 = int(b) * rows
            # the pairs of these anchors whose neighbour lies in block b, in anchor order
            flat = np.flatnonzero(blocks == b)
            partners = anchors if b0 == a0 else load(buffers[1], b0)
            for s in range(0, len(flat), pairs):
                chunk = flat[s:s + pairs]
                neg_log_sum += score("pk,pk->p", anchors[chunk // m], partners[block_nb[chunk] - b0])
    return column_sums, neg_log_sum


# --------------------------------------------------------------------------- heads

class ClusterHeads(nn.Module):
    """`n_heads` independent clustering heads, (B, in_dim) -> list of n_heads logits (B, n_clusters).

    hidden_dim 0: a linear layer per head (SCAN's head on a trained backbone); > 0: Linear -> BN ->
    ReLU -> Linear, which frozen features of a network trained for another task need.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int = 10, hidden_dim: int = 0):
        super().__init__()
        if n_clusters < 2 or n_heads < 1:
            raise NolabelError(f"need n_clusters >= 2 and n_heads >= 1, got {n_clusters} and {n_heads}")
        self.in_dim, self.n_clusters, self.hidden_dim = in_dim, n_clusters, hidden_dim

        def head() -> nn.Module:
            if hidden_dim <= 0:
                return nn.Linear(in_dim, n_clusters)
            return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Linear(hidden_dim, n_clusters))

        self.heads = nn.ModuleList(head() for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h(x) for h in self.heads]

    def single(self, index: int) -> nn.Module:
        """Head `index` alone, as a module (B, in_dim) -> (B, n_clusters)."""
        return self.heads[index]


class ListHead(nn.Module):
    """One network returning a one-element list of logits: the calling convention of ClusterHeads,
    for a single kept head (self-labeling trains and saves its weights under this wrapper's `body`)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.body(x)]


# --------------------------------------------------------------------------- configuration

@dataclass
class ScanConfig:
    """Hyper-parameters of SCAN training (defaults: SCAN's CIFAR settings, Adam lr 1e-4 for the
    whole network; heads on frozen features train with a larger lr)."""

    n_clusters: int = 10
    n_heads: int = 10
    entropy_weight: float = 5.0
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 1e-4
    hidden_dim: int = 0
    num_neighbors: int | None = None  # None: all stored neighbours
    seed: int = 0
    bf16: bool = False
    device: str = "auto"  # cpu, cuda or auto (cuda when a GPU is visible); results come back on the CPU

    def validate(self) -> None:
        distributed.check_device_name(self.device)
        if self.n_clusters < 2 or self.n_heads < 1 or self.epochs < 1 or self.batch_size < 2:
            raise NolabelError("SCAN needs n_clusters >= 2, n_heads >= 1, epochs >= 1 and batch_size >= 2, got "
                               f"{self.n_clusters}, {self.n_heads}, {self.epochs}, {self.batch_size}")
        if self.entropy_weight < 0 or self.lr <= 0:
            raise NolabelError(f"entropy_weight must be >= 0 and lr > 0, got {self.entropy_weight}, {self.lr}")


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


# --------------------------------------------------------------------------- inputs

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
        from ..augment import to_float_images

        keep = slice(None) if rows is None else slice(rows.start, rows.stop)
        if not augmented:
            return self.prepare(to_float_images(self.images[idx[keep]]))
        return self.prepare(self.augment(to_float_images(self.images[idx]), generator)[keep])


# --------------------------------------------------------------------------- training

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
    stored = neighbors[:, :config.num_neighbors] if config.num_neighbors else neighbors
    # Candidates: the anchor itself plus its stored neighbours.
    candidates = np.concatenate([np.arange(n)[:, None], stored], axis=1)
    generator = seeded_generator(config.seed)
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
            x = torch.cat([inputs.batch(anchors, True, generator, local), inputs.batch(partners, True, generator, local)])
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


def select_head(head_losses: list[dict[str, float]]) -> int:
    """Index of the head with the lowest total SCAN loss (ties: the first; a NaN total, from a
    diverged head, never wins unless every head has one)."""
    if not head_losses:
        raise NolabelError("no head to choose from")
    totals = np.array([h["total"] for h in head_losses], dtype=np.float64)
    return int(np.argmin(np.where(np.isnan(totals), np.inf, totals)))


def save_scan(path: Path, result: ScanResult, config: ScanConfig, extra_modules: dict[str, nn.Module],
              meta: dict[str, Any]) -> Path:
    from ..io import atomic_path

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
    path = Path(path)
    if not path.is_file():
        raise NolabelError(f"{path}: SCAN checkpoint not found; run `nolabel scan` first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") != "nolabel-scan":
        raise NolabelError(f"{path}: not a SCAN checkpoint written by nolabel")
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
    config = config or ScanConfig(lr=1e-3, epochs=100)
    inputs = FeatureInputs(features, augmented)
    torch.manual_seed(config.seed)  # head initialisation
    heads = ClusterHeads(inputs.dim, config.n_clusters, config.n_heads, config.hidden_dim)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
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
    from ..augment import StrongAugment
    from ..training import network_input

    config = config or ScanConfig()
    size = image_size or backbone.input_size
    inputs = ImageInputs(images, network_input(backbone, size), augment or StrongAugment())
    torch.manual_seed(config.seed)  # head initialisation
    heads = ClusterHeads(backbone.feature_dim, config.n_clusters, config.n_heads, config.hidden_dim)
    model = _BackboneWithHeads(backbone, heads)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return _train(model, heads, inputs, np.asarray(neighbors), config, out, {"backbone": backbone},
                  list(model.parameters()), show_progress,
                  {"mode": "network", "model": getattr(backbone, "architecture", getattr(backbone, "name", None))})


# --------------------------------------------------------------------------- the stage, from files

def _labelled_metrics(predictions: np.ndarray, labels: np.ndarray | None) -> dict[str, Any] | None:
    from ..metrics import evaluate

    if labels is None or not (np.asarray(labels) >= 0).any():
        return None
    known = np.asarray(labels) >= 0
    return evaluate(predictions[known], np.asarray(labels)[known])


def load_stage_inputs(features: str | Path | None, augmented: list[str | Path] | tuple = (), data: str | None = None,
                      model: str | None = None, weights: str | Path | None = None, image_size: int | None = None,
                      backbone_state: dict | None = None) -> dict[str, Any]:
    """What a SCAN or self-labeling stage trains on, from files.

    Frozen mode (`features` given): the FeatureStore's (N, D) features as float32, its labels, and the
    (V, N, D) features of the augmented-view stores. Network mode (`data` and `model`): the dataset's
    images in memory and the backbone (`weights` file, or a saved `backbone_state`).
    """
    from ..store import FeatureStore

    if (features is None) == (data is None):
        raise NolabelError("give either --features (heads on frozen features) or --data and --model (whole network)")
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
    from ..data import load
    from ..models import create
    from ..training import images_in_memory

    if model is None:
        raise NolabelError("network mode needs --model NAME (and usually --weights from `nolabel pretrain simclr`)")
    backbone = create(model, weights=weights, pretrained=weights is None and backbone_state is None)
    if backbone_state is not None:
        backbone.load_state_dict(backbone_state)
    dataset = load(data)
    size = image_size or backbone.input_size
    return {"mode": "network", "images": images_in_memory(dataset, size), "backbone": backbone,
            "image_size": size, "labels": dataset.labels if (dataset.labels >= 0).any() else None}


def predict_scan(scan_dir: str | Path, *, features: str | Path | None = None, data: str | None = None,
                 image_size: int | None = None, selflabel_dir: str | Path | None = None, batch_size: int = 512,
                 device: str = "auto") -> np.ndarray:
    """Cluster probabilities (N, K) of new images under a finished SCAN stage's kept head, or under
    its self-labeled version (`selflabel_dir`, a `run_selflabel` output made from `scan_dir`).

    Frozen-features SCAN takes `features`, a FeatureStore of the same backbone (SCAN's PCA, if any,
    is applied); whole-network SCAN takes `data`, a dataset spec run through the backbone it trained.
    """
    from ..io import read_json

    scan_dir = Path(scan_dir)
    heads, best, saved = load_scan(scan_dir / "scan.pt")
    backbone_state = saved["modules"].get("backbone")
    if (features is None) == (data is None):
        raise NolabelError("give either features (frozen-features SCAN) or data (whole-network SCAN)")
    if (backbone_state is None) != (features is not None):
        raise NolabelError(f"{scan_dir}: SCAN ran {'on frozen features' if backbone_state is None else 'on the whole network'};"
                           f" predict from {'features' if backbone_state is None else 'data (images)'}")
    inputs = load_stage_inputs(features, (), data, saved["meta"].get("model"), None, image_size, backbone_state)
    inputs = apply_stage_pca(scan_dir, inputs)
    head = heads.single(best)
    body = head if inputs["mode"] == "features" else nn.Sequential(inputs["backbone"], head)
    model = ListHead(body)
    skipped = selflabel_dir is not None and (Path(selflabel_dir) / "selflabel.json").is_file() and \
        read_json(Path(selflabel_dir) / "selflabel.json").get("skipped")
    if selflabel_dir is not None and not skipped:  # a skipped self-labeling kept the SCAN head as it was
        path = Path(selflabel_dir) / "selflabel.pt"
        if not path.is_file():
            raise NolabelError(f"{path}: self-labeling checkpoint not found; run `nolabel selflabel` first")
        trained = torch.load(path, map_location="cpu", weights_only=True)
        if trained.get("format") != "nolabel-selflabel":
            raise NolabelError(f"{path}: not a self-labeling checkpoint written by nolabel")
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
        from ..training import network_input

        source = ImageInputs(inputs["images"], network_input(inputs["backbone"], inputs["image_size"]), None)
    model.to(distributed.resolve_device(device))
    try:
        return _predict(model, source, source.n, batch_size, bf16=False)[0]
    finally:
        model.to("cpu")


def write_augmented_views(data: str, model: str, out_dir: str | Path, *, kind: str = "strong", n_views: int = 2,
                          weights: str | Path | None = None, image_size: int | None = None, bf16: bool = False,
                          seed: int = 0, batch_size: int = 256, show_progress: bool = True) -> list[Path]:
    """Features of `n_views` random augmented views of every image, one FeatureStore per view
    (`out_dir/view0`, ...), for SCAN and self-labeling on frozen features (`augmented=` of `run_scan`,
    `run_selflabel`). kind: "weak" (flip + translation) or "strong" (weak + 4 RandAugment-style ops +
    Cutout). Finished views are kept (resumable) while their record matches the request - the
    images by content, the weights by hash, the augmentation, seed and precision; a view computed
    from anything else is recomputed, with a message."""
    from ..augment import StrongAugment, WeakAugment
    from ..data import load
    from ..models import create
    from ..pretrain.simclr import extract_features
    from ..store import FeatureStore, is_complete, write_store
    from ..training import images_in_memory

    augments = {"weak": WeakAugment, "strong": StrongAugment}
    if kind not in augments:
        raise NolabelError(f"augmented view kind must be one of {sorted(augments)}, got {kind!r}")
    backbone = create(model, weights=weights).eval()
    dataset = load(data)
    data_fingerprint = dataset.fingerprint()
    size = image_size or backbone.input_size
    images = images_in_memory(dataset, size)
    out = Path(out_dir)
    paths = []
    for v in range(n_views):
        path = out / f"view{v}"
        paths.append(path)
        wanted = {"data": data, "data_fingerprint": data_fingerprint, "model": model,
                  "weights_sha256": getattr(backbone.load_report, "sha256", None), "image_size": size,
                  "augmentation": kind, "view": v, "seed": seed, "bf16": bf16, "batch_size": batch_size}
        previous = record.read(path)
        if is_complete(path) and previous is not None and previous["fingerprint"] == record.fingerprint(wanted):
            continue
        if previous is not None:
            changed = ", ".join(record.differences(previous["inputs"], wanted))
            print(f"{path}: stored {kind} view differs in {changed}; recomputing it", flush=True)
        generator = torch.Generator().manual_seed(seed * 1000 + v)
        feats = extract_features(backbone, images, size, batch_size, bf16, show_progress, augments[kind](), generator)
        write_store(path, feats, dataset.labels, dataset.item_names,
                    {**wanted, "weights": str(weights) if weights else None}, inputs=wanted)
    return [FeatureStore.open(p).path for p in paths]


PCA_FILE = "pca.npz"
NEIGHBORS_RECORD = "neighbors.record.json"


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
    from .pca import PCA

    return project_inputs(inputs, PCA.load(path))


def _stage_pca(out: Path, inputs: dict[str, Any], n_components: int | None, refit: bool) -> dict[str, Any]:
    """PCA before the heads (frozen mode): fitted on the clean features, saved as `out/pca.npz` for
    self-labeling and reused when an interrupted run resumes (`refit`: the stage starts over, so a
    saved PCA belongs to other inputs). MLP heads on all 3,880 dimensions of
    `efficientnet_lite0_multilevel` would cost a CPU many times more per step than on 256."""
    from .pca import PCA

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
    from ..store import FeatureStore

    if features is not None:
        return {"mode": "features", "features": FeatureStore.open(features).fingerprint,
                "views": [FeatureStore.open(a).fingerprint for a in augmented]}
    from ..data import load
    from ..io import sha256_file

    if data is None:
        raise NolabelError("give either --features (heads on frozen features) or --data and --model (whole network)")
    return {"mode": "network", "data": data, "data_fingerprint": load(data).fingerprint(), "model": model,
            "weights_sha256": sha256_file(weights) if weights else None, "image_size": image_size}


def run_scan(out_dir: str | Path, *, features: str | Path | None = None, augmented: list[str | Path] | tuple = (),
             data: str | None = None, model: str | None = None, weights: str | Path | None = None,
             image_size: int | None = None, num_neighbors: int = 20, pca_components: int | None = None,
             config: ScanConfig | None = None, force: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """The SCAN stage from files: mine neighbours, train, and write into `out_dir`: neighbors.npy,
    scan.pt, probabilities.npy (N, K), predictions.npy (N,), scan.json (chosen head, per-head
    losses, neighbour purity and metrics when labels exist) and, last, record.json.

    A result finished in `out_dir` from the same inputs and settings is returned as it is; an
    unfinished one resumes; one made from others is replaced only with `force`. Neighbours have
    their own record (neighbors.record.json): they are reused, even by a replaced stage, only when
    mined from the same features (and PCA) with the same count.

    pca_components: frozen mode only; project the features (and augmented views) to this many PCA
    dimensions before mining neighbours and training the heads (the PCA is saved as pca.npz and
    self-labeling applies it too). Returns scan.json's content."""
    from ..io import read_json, save_npy, write_json
    from .neighbors import load_neighbors, mine_neighbors, neighbor_purity, save_neighbors

    out = Path(out_dir)
    config = config or ScanConfig()
    config.validate()
    distributed.resolve_device(config.device)  # a missing GPU fails here, before any file is written
    if pca_components is not None and (data is not None or pca_components < 1):
        raise NolabelError("PCA before the heads takes a number of dimensions >= 1 and applies to frozen "
                           f"features (--features) only; got {pca_components} with "
                           f"{'--data (whole network)' if data is not None else '--features'}")
    source = stage_source(features, augmented, data, model, weights, image_size)
    stage_inputs = {**source, "pca": pca_components, "num_neighbors": num_neighbors,
                    "config": record.without(asdict(config), "device")}
    status = record.begin(out, "scan", stage_inputs, force=force, what="a SCAN result")
    if status is record.DONE:
        return read_json(out / "scan.json")
    if status is record.START:  # a training state here belongs to other inputs
        (out / "scan_state.pt").unlink(missing_ok=True)
    inputs = load_stage_inputs(features, augmented, data, model, weights, image_size)
    started = time.perf_counter()
    inputs = _stage_pca(out, inputs, pca_components, refit=status is record.START)
    if inputs["mode"] == "features":
        base = inputs["features"]
    else:
        from ..pretrain.simclr import extract_features

        base = extract_features(inputs["backbone"], inputs["images"], inputs["image_size"], bf16=config.bf16)
    # Neighbours keep a record of their own: reused only when mined in the same space, as many.
    nb_inputs = {"space": {k: v for k, v in source.items() if k != "views"}, "pca": pca_components,
                 "bf16": config.bf16 if inputs["mode"] == "network" else None, "k": num_neighbors}
    nb_path = out / "neighbors.npy"
    if record.is_done(out, nb_inputs, name=NEIGHBORS_RECORD):
        neighbors = load_neighbors(nb_path, n=len(base))
    else:
        neighbors = mine_neighbors(base, k=num_neighbors)
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
        "mode": inputs["mode"], "n": int(len(base)), "num_neighbors": int(neighbors.shape[1]),
        "augmented_views": 0 if inputs.get("augmented") is None else len(inputs["augmented"]),
        "pca_components": pca_components,
        "neighbor_purity": neighbor_purity(neighbors, labels) if labels is not None else None,
        "best_head": result.best_head, "head_losses": result.head_losses,
        "metrics": _labelled_metrics(result.predictions, labels),
        "seconds": {"neighbors": mined, "train": result.seconds},
        "config": _json(config),
    }
    if distributed.is_main():
        save_npy(out / "probabilities.npy", result.probabilities.astype(np.float32))
        save_npy(out / "predictions.npy", result.predictions.astype(np.int64))
        write_json(out / "scan.json", summary)
    record.finish(out, "scan", stage_inputs)
    return summary
