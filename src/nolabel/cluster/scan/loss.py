"""SCAN's loss: the batch loss trained on, and the whole-dataset loss that chooses a head.

    loss = -mean_x log <p(x), p(n(x))>  -  entropy_weight * H(mean_x p(x))

for an image x and one of its mined neighbours n(x): agreement with the neighbours, minus the
entropy of the mean prediction, which keeps every cluster in use.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ... import distributed
from ...errors import NolabelError

_EPS = 1e-8



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
    memory, default LOSS_CHUNK_BYTES), never as an (N, M, K) tensor. The probabilities stay in their own
    dtype; every sum is taken in float64 (a product of two float32 is exact in float64), so the result
    equals the float64 formula up to float64 rounding. A memmap larger than `block_bytes` (default LOSS_BLOCK_BYTES) is
    read in row blocks of that size, two at a time, and the pages read are released: memory stays
    about 2 x block_bytes + memory_bytes whatever N.
    """
    from ...io import release_pages

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
    from ...io import release_pages

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


def select_head(head_losses: list[dict[str, float]]) -> int:
    """Index of the head with the lowest total SCAN loss (ties: the first; a NaN total, from a
    diverged head, never wins unless every head has one)."""
    if not head_losses:
        raise NolabelError("no head to choose from")
    totals = np.array([h["total"] for h in head_losses], dtype=np.float64)
    return int(np.argmin(np.where(np.isnan(totals), np.inf, totals)))
