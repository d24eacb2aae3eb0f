"""torch.distributed helpers shared by extraction, k-means and training.

Processes started by `torchrun` carry RANK / WORLD_SIZE / MASTER_ADDR in their environment;
`init()` joins the process group from them (gloo on CPU, nccl on GPU). In a plain process every
helper degrades to the single-process answer, so library code calls them unconditionally.
"""
from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from .config import DEVICES
from .errors import NolabelError



def init(backend: str | None = None) -> bool:
    """Join the torchrun process group if launched by torchrun; return whether distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    # Exiting with the group alive leaves gloo's threads to die with the interpreter: a rank then
    # aborted ("terminate called without an active exception") in ~2 of 10 two-process k-means runs.
    atexit.register(_leave)
    return True


def _leave() -> None:
    """Leave the group together: a rank that destroys its group while another still runs (e.g. still
    writing its results) closes the connections under that rank's gloo threads, which then abort it
    (2 of 5 two-process training runs did, after their work was done)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (no-op in one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all processes as a new tensor that gradients flow through (the
    gradient of a sum is the summed gradient); `tensor` itself in one process."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def shard(n: int) -> range:
    """The contiguous block of `range(n)` this process owns (blocks differ by at most one)."""
    r, w = rank(), world_size()
    return range(n * r // w, n * (r + 1) // w)


def check_device_name(name: str) -> None:
    if name not in DEVICES:
        raise NolabelError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """The torch device for "cpu", "cuda" or "auto" (cuda when a GPU is visible); under torchrun each
    process takes the GPU of its LOCAL_RANK."""
    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NolabelError('device "cuda" was asked for but no CUDA device is visible; use "cpu" or "auto"')
    if name == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)
