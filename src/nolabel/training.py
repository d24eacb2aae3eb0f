"""Shared pieces of nolabel's training loops (SimCLR, SCAN, self-labeling, DeepCluster).

- `cosine_lr`: the learning rate of a cosine schedule with linear warm-up, per step;
- `seeded`: a block run with torch's global RNG seeded, the caller's RNG state restored after it;
- `TrainingState`: save/resume of everything a loop needs to continue exactly (model and head
  weights, optimizer, epoch, history, random generator), written atomically once per epoch;
- `progress`: an iterable's progress display (`nolabel.progress`) on the main process only;
- `images_in_memory`: a dataset as one uint8 array, so batches are augmented as tensors;
- `network_input`: float images in [0, 1] -> a backbone's normalised input;
- `encode`: a network over an in-memory uint8 array in batches, in eval mode;
- `ModelEMA`: an exponential moving average of a model's weights;
- `wrap_distributed`: DistributedDataParallel under torchrun, the module itself otherwise.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import distributed, record
from .errors import NolabelError
from .io import atomic_path


def cosine_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0) -> float:
    """Learning rate at `step` (0-based): linear warm-up to `base_lr`, then cosine decay to
    `final_fraction * base_lr` at `total_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress_ = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    final = base_lr * final_fraction
    return final + (base_lr - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run a block - a training's weight initialisation, its loop - with torch's global random
    generators seeded with `seed`, and hand the caller's back afterwards: what draws from them
    (initialisation, dropout) is reproducible, and calling a training function leaves the caller's
    random state as it was. Every training function seeds through this, never `torch.manual_seed`.

    The generators are the CPU's and, when `device` is (or "auto" resolves to) a CUDA device, that
    device's, saved and restored by `torch.random.fork_rng`. Other GPUs are neither seeded nor
    touched (`torch.manual_seed` would seed them all - or, before CUDA starts, queue the seed for the
    caller's first CUDA use). Data order and augmentation draw from explicit `torch.Generator`s.
    """
    device = distributed.resolve_device(device) if isinstance(device, str) else torch.device(device)
    gpus = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpus):
        torch.random.default_generator.manual_seed(seed)
        for gpu in gpus:
            torch.cuda.default_generators[gpu].manual_seed(seed)
        yield


class TrainingState:
    """Resumable training state in one file, `torch.save`d atomically, read with `weights_only=True`.

    `inputs` are what the training's result depends on (data fingerprints, hyper-parameters, the
    initial weights; see `training_inputs`): the state records their fingerprint, and a state saved
    for other inputs is never resumed - `load` raises, naming what differs.

    `save(epoch, modules, optimizer, generator, history, **extra)` stores the state dicts of the
    named modules, the optimizer, the generator state, the number of finished epochs and a JSON-able
    history; `load()` returns that dict, or None when the file does not exist (a fresh start).
    `restore(state, modules, optimizer, generator)` puts it back.
    """

    def __init__(self, path: str | Path, inputs: dict[str, Any]):
        self.path = Path(path)
        self.inputs = record.canonical(inputs)
        self.fingerprint = record.fingerprint(inputs)

    def save(self, epoch: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
             generator: torch.Generator | None, history: list[dict[str, Any]], **extra: Any) -> None:
        if not distributed.is_main():
            return
        state = {
            "epoch": int(epoch),
            "modules": {name: _unwrap(m).state_dict() for name, m in modules.items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "generator": generator.get_state() if generator is not None else None,
            "history": history,
            "inputs": self.inputs,
            "fingerprint": self.fingerprint,
            **extra,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say which and how to start over
            raise NolabelError(f"{self.path}: cannot resume from this training state ({e}); "
                               "delete it to start over") from None
        if state.get("fingerprint") != self.fingerprint:
            changed = ", ".join(record.differences(state.get("inputs", {}), self.inputs)) or "its format"
            raise NolabelError(f"{self.path}: holds a training begun with other settings ({changed} differ), "
                               "which is not resumed; pass --force to start over, or choose another folder")
        return state

    def resume(self, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
               generator: torch.Generator | None) -> tuple[int, list[dict[str, Any]]]:
        """Restore a saved state if there is one; return (epochs already done, history so far)."""
        state = self.load()
        if state is None:
            return 0, []
        self.restore(state, modules, optimizer, generator)
        return int(state["epoch"]), list(state["history"])

    @staticmethod
    def restore(state: dict[str, Any], modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
                generator: torch.Generator | None) -> None:
        missing = set(modules) - set(state["modules"])
        if missing:
            raise NolabelError(f"the training state has no weights for {sorted(missing)}; delete it to start over")
        for name, module in modules.items():
            _unwrap(module).load_state_dict(state["modules"][name])
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if generator is not None and state.get("generator") is not None:
            generator.set_state(state["generator"])


def training_inputs(config: Any, *data: np.ndarray | None, modules: dict[str, nn.Module] | None = None,
                    **more: Any) -> dict[str, Any]:
    """A training's inputs for its `TrainingState`: the config's fields but `device` (where it runs,
    not what it computes), the fingerprint of the data arrays it trains on, and that of the
    initial weights of `modules` (computed before anything is restored). Labels that only feed a
    monitor are not inputs: they never change what is trained."""
    return {"config": record.without(dataclasses.asdict(config), "device"),
            "data": record.array_fingerprint(*data),
            "initial_weights": {name: module_fingerprint(m) for name, m in (modules or {}).items()},
            **more}


def begin_training(out_dir: Path, stage: str, inputs: dict[str, Any], force: bool, files: tuple[str, ...],
                   what: str) -> record.Status:
    """Claim `out_dir` for a training with these `inputs` (`record.begin`); when it starts over,
    remove `files` (state, checkpoint, history) left by a training of other inputs."""
    status = record.begin(out_dir, stage, inputs, force=force, what=what)
    if status is record.START:
        if distributed.is_main():
            for name in files:
                (out_dir / name).unlink(missing_ok=True)
        distributed.barrier()
    return status


def load_result(path: str | Path, kind: str, command: str) -> dict[str, Any]:
    """A training result nolabel wrote (`{"format": "nolabel-<kind>", ...}`, tensors only), or a clear
    error when the file is missing (run `nolabel <command>` first) or is something else."""
    path = Path(path)
    if not path.is_file():
        raise NolabelError(f"{path}: {kind} checkpoint not found; run `nolabel {command}` first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != f"nolabel-{kind}":
        raise NolabelError(f"{path}: not a {kind} checkpoint written by nolabel")
    return saved


def module_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, value in _unwrap(module).state_dict().items():
        tensor = value.detach().cpu().contiguous().reshape(-1)  # 1-d: a 0-d tensor has no byte view
        h.update(f"{name}:{tensor.dtype}:{tuple(value.shape)}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def wrap_distributed(module: nn.Module) -> nn.Module:
    """DistributedDataParallel around `module` when running under torchrun, else `module`."""
    if not distributed.is_distributed() or not any(p.requires_grad for p in module.parameters()):
        return module
    return nn.parallel.DistributedDataParallel(module)


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True):
    """`iterable` with a progress display (rate, ETA; a bar on a terminal, plain lines in a log) on
    the main process; silent elsewhere or when not `enabled` (see `nolabel.progress`)."""
    from .progress import progress_bar

    return progress_bar(iterable, total=total, desc=desc, enabled=enabled, leave=False)


def images_in_memory(dataset: Any, size: int | None = None) -> np.ndarray:
    """The dataset's images as one uint8 array (N, H, W) or (N, H, W, 3).

    Array datasets (Fashion-MNIST, CIFAR, digits) hand over `dataset.images` as they are; other
    datasets are decoded once and resized + centre-cropped to `size` x `size` (required then).
    """
    images = getattr(dataset, "images", None)
    if images is not None:
        return np.asarray(images)
    if size is None:
        raise NolabelError(f"{dataset!r} is not held in memory; give the image size to decode it to")
    from .models.backbone import EvalTransform, Preprocessing

    transform = EvalTransform(Preprocessing(size, crop_fraction=1.0), size)
    out = np.empty((len(dataset), size, size, 3), dtype=np.uint8)
    for i in progress(range(len(dataset)), desc="decoding images"):
        out[i] = transform.to_uint8(dataset[i][0])
    return out


def network_input(backbone: Any, size: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function: float images (B, C, H, W) in [0, 1] -> the backbone's input, resized (antialiased
    bilinear) to `size` (default its input size), normalised with its mean/std, channels_last."""
    import torch.nn.functional as F

    from .augment import normalize

    size = int(size or backbone.input_size)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return normalize(x, backbone.mean, backbone.std).contiguous(memory_format=torch.channels_last)

    return prepare


@torch.no_grad()
def encode(network: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray,
           prepare: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 512, bf16: bool = False,
           show_progress: bool = False) -> np.ndarray:
    """Run `network(prepare(float images in [0, 1]))` over a uint8 array in batches -> float32 (N, D).

    Modules are put in eval mode for the pass and back in their previous mode afterwards; batches go
    to the module's device (prepared on the CPU) and the features come back to the CPU.
    """
    from .augment import to_float_images

    module = network if isinstance(network, nn.Module) else None
    was_training = module.training if module is not None else False
    device = next(iter(module.parameters()), torch.empty(0)).device if module is not None else torch.device("cpu")
    if module is not None:
        module.eval()
    outputs = []
    try:
        starts = range(0, len(images), batch_size)
        for start in progress(starts, total=len(starts), desc="encoding", enabled=show_progress):
            x = prepare(to_float_images(images[start:start + batch_size])).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                outputs.append(network(x).float().cpu())
    finally:
        if module is not None:
            module.train(was_training)
    return torch.cat(outputs).numpy()


class ModelEMA:
    """Exponential moving average of a module's parameters and buffers: w_ema <- d * w_ema + (1 - d) * w."""

    def __init__(self, module: nn.Module, decay: float = 0.999):
        import copy

        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(_unwrap(module)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = _unwrap(module).state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(self.decay).add_(current[name].detach(), alpha=1 - self.decay)
            else:
                value.copy_(current[name])
