"""Self-labeling, SCAN's last step: train on the clustering's own confident predictions.

For each batch, the prediction on a clean (or weakly augmented) view gives pseudo-labels where its
confidence exceeds `threshold` (default 0.99); the network is trained with cross-entropy to predict
those labels from a strongly augmented view (RandAugment-style ops + Cutout; or precomputed
features of such views in frozen mode). Class balancing weighs each pseudo-class in the batch by the
inverse of its frequency among the confident samples, so large clusters do not swallow small ones.
An optional EMA of the weights gives the final predictions.

When no sample is confident, there is nothing to learn from: `train_selflabel_*` says so in
`SelfLabelResult.message` (and on stdout), returns the SCAN predictions unchanged with
`skipped=True`, and never crashes on an empty mask. Batches with no confident sample are skipped.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed, record
from ..config import EvaluateConfig, SelfLabelConfig
from ..errors import NolabelError
from ..training import (ModelEMA, TrainingState, cosine_lr, progress, seeded, set_lr, training_inputs,
                        wrap_distributed)
from .scan.heads import ListHead
from .scan.loss import entropy
from .scan.train import FeatureInputs, ImageInputs, _predict


@dataclass
class SelfLabelResult:
    """`probabilities` (N, K) after self-labeling, or the SCAN ones when `skipped`."""

    probabilities: np.ndarray
    skipped: bool
    message: str
    confident_fraction: float  # before training
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1)


def self_label_loss(clean_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float = 0.99,
                    class_balance: bool = True, entropy_weight: float = 0.0,
                    batch_size: int | None = None) -> tuple[torch.Tensor | None, int]:
    """Masked cross-entropy of the strong view against the clean view's confident argmax.

    clean_logits, strong_logits: (B, K). Returns (loss or None when no sample is confident, number
    of confident samples). With class balancing each pseudo-class present gets weight
    n_confident / count(class), i.e. every class present contributes equally. `entropy_weight` > 0
    subtracts entropy_weight * H(mean softmax of the strong logits over the whole batch).

    Under torchrun each process passes its own rows of a batch of `batch_size`: the confident
    samples, the class counts and the mean prediction are those of the whole batch (summed over the
    processes), and the loss returned is this process's share, scaled so that the gradient
    DistributedDataParallel averages is the whole batch's. Every process then gets a loss - a zero
    share when none of its own rows is confident - or all get None, so all take the same steps.
    """
    world = distributed.world_size()
    k = clean_logits.shape[1]
    with torch.no_grad():
        probs = F.softmax(clean_logits.float(), dim=1)
        confidence, target = probs.max(1)
        mask = confidence > threshold
        counts = distributed.all_reduce_sum(torch.bincount(target[mask], minlength=k).to(torch.int64))
    n_confident = int(counts.sum())
    if n_confident == 0:
        return None, 0
    if class_balance:
        weight = torch.where(counts > 0, n_confident / counts.clamp_min(1).float(), torch.zeros(k))
    else:
        weight = torch.ones(k)
    weight = weight.to(strong_logits.device)
    # F.cross_entropy(weight=w) is sum_i w[y_i] CE_i / sum_i w[y_i] over the confident rows of the
    # whole batch; the denominator is known from the global counts.
    denominator = float((weight.cpu() * counts.float()).sum())
    per_sample = F.cross_entropy(strong_logits[mask].float(), target[mask], reduction="none")
    loss = (weight[target[mask]] * per_sample).sum() * (world / denominator)
    if mask.sum() == 0:  # keep this process's loss attached to its outputs (DDP's collectives)
        loss = loss + strong_logits.float().sum() * 0
    if entropy_weight > 0:
        n = batch_size or len(strong_logits)
        mean_prediction = distributed.all_reduce_sum_with_grad(F.softmax(strong_logits.float(), 1).sum(0)) / n
        loss = loss - entropy_weight * entropy(mean_prediction)
    return loss, n_confident


def confident_fraction(probabilities: np.ndarray, threshold: float) -> float:
    return float((np.asarray(probabilities).max(1) > threshold).mean())


def _train(model: nn.Module, inputs, scan_probabilities: np.ndarray, config: SelfLabelConfig,
           out_dir: Path | None, modules: dict[str, nn.Module], show_progress: bool) -> SelfLabelResult:
    config.validate()
    started = time.perf_counter()
    n = inputs.n
    if len(scan_probabilities) != n:
        raise NolabelError(f"{len(scan_probabilities)} SCAN predictions for {n} inputs")
    initial = confident_fraction(scan_probabilities, config.threshold)
    if initial == 0.0:
        message = (f"self-labeling skipped: no sample has confidence above {config.threshold} (highest "
                   f"{float(np.max(scan_probabilities)):.4f}); kept the SCAN result. Lower the threshold "
                   f"or train SCAN longer.")
        if distributed.is_main():
            print(message, flush=True)
        return SelfLabelResult(np.asarray(scan_probabilities), True, message, 0.0,
                               seconds=time.perf_counter() - started)
    generator = torch.Generator().manual_seed(config.random_state)  # the global RNG: seeded by the caller
    # Before the optimizer and the EMA copy exist, so both (and a resumed state) live on the device.
    device = distributed.resolve_device(config.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    ema = ModelEMA(model, config.ema_decay) if config.ema_decay else None
    all_modules = {**modules, **({"ema": ema.module} if ema else {})}
    state_file = None
    if out_dir is not None:
        state_file = TrainingState(out_dir / "selflabel_state.pt", training_inputs(
            config, scan_probabilities, modules=modules, inputs=inputs.fingerprint()))
    start_epoch, history = state_file.resume(all_modules, optimizer, generator) if state_file else (0, [])
    ddp_model = wrap_distributed(model)
    steps = max(1, n // config.batch_size)
    local = distributed.shard(config.batch_size)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = torch.randperm(n, generator=generator).numpy()
        losses, confident = [], 0
        bar = progress(range(steps), total=steps, desc=f"selflabel {epoch + 1}/{config.epochs}", enabled=show_progress)
        for step in bar:
            set_lr(optimizer, cosine_lr(config.lr, epoch * steps + step, steps * config.epochs, final_fraction=0.1))
            # the whole batch's random draws in every process, each keeping its own rows (`local`)
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            clean = inputs.batch(idx, False, generator, local).to(device, non_blocking=True)
            strong = inputs.batch(idx, True, generator, local).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                # Targets come from the model in eval mode (BN statistics not polluted by the clean pass).
                model.eval()
                with torch.no_grad():
                    clean_logits = model(clean)[0]
                model.train()
                strong_logits = ddp_model(strong)[0]
            loss, n_conf = self_label_loss(clean_logits, strong_logits, config.threshold, config.class_balance,
                                           config.entropy_weight, batch_size=len(idx))
            confident += n_conf
            if loss is None:  # no confident sample in the whole batch: every process skips the step
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            losses.append(loss.item())
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                        "confident_fraction": confident / max(1, steps * config.batch_size)})
        if state_file is not None:
            state_file.save(epoch + 1, all_modules, optimizer, generator, history, config=asdict(config))
        distributed.barrier()
    final = ema.module if ema is not None else model
    probabilities = _predict(final, inputs, n, max(config.batch_size, 512), config.bf16)[0]
    for module in (model, final):
        module.to("cpu")  # results are handed back on the CPU
    message = (f"self-labeling: {initial:.1%} of samples confident above {config.threshold} at the start, "
               f"{confident_fraction(probabilities, config.threshold):.1%} at the end")
    result = SelfLabelResult(probabilities, False, message, initial, history, seconds=time.perf_counter() - started)
    if out_dir is not None and distributed.is_main():
        from ..io import atomic_path

        result.checkpoint = out_dir / "selflabel.pt"
        with atomic_path(result.checkpoint) as tmp:
            torch.save({"format": "nolabel-selflabel", "config": asdict(config),
                        "modules": {k: m.state_dict() for k, m in all_modules.items()}}, tmp)
    return result


def train_selflabel_features(features: np.ndarray, head: nn.Module, scan_probabilities: np.ndarray,
                             config: SelfLabelConfig | None = None, augmented: np.ndarray | None = None,
                             out_dir: str | Path | None = None, show_progress: bool = True) -> SelfLabelResult:
    """Self-label a SCAN head on frozen features.

    features (N, D) give the pseudo-labels; `augmented` (V, N, D), features of strongly augmented
    views, are what the head learns from (without them, the clean features: no augmentation).
    `head` (from `ClusterHeads.single(best)`) is trained in place.
    """
    config = config or SelfLabelConfig(lr=1e-3, epochs=20)
    out = _prepare_out(out_dir)
    with seeded(config.random_state, config.device):  # the caller's RNG state is kept
        return _train(ListHead(head), FeatureInputs(features, augmented), scan_probabilities, config, out,
                      {"head": head}, show_progress)


def train_selflabel_network(images: np.ndarray, backbone: nn.Module, head: nn.Module, scan_probabilities: np.ndarray,
                            config: SelfLabelConfig | None = None, strong_augment: Callable | None = None,
                            image_size: int | None = None, out_dir: str | Path | None = None,
                            show_progress: bool = True) -> SelfLabelResult:
    """Self-label backbone + head on uint8 images (N, H, W[, 3]); strong view: StrongAugment (4 ops + Cutout)."""
    from ..augment import StrongAugment
    from ..training import network_input

    config = config or SelfLabelConfig()
    inputs = ImageInputs(images, network_input(backbone, image_size), strong_augment or StrongAugment())
    out = _prepare_out(out_dir)
    with seeded(config.random_state, config.device):  # training (e.g. dropout) from the seed; the caller's RNG kept
        return _train(ListHead(nn.Sequential(backbone, head)), inputs, scan_probabilities, config, out,
                      {"backbone": backbone, "head": head}, show_progress)


def _prepare_out(out_dir: str | Path | None) -> Path | None:
    if out_dir is None:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_selflabel(scan_dir: str | Path, out_dir: str | Path, *, features: str | Path | None = None,
                  augmented: list[str | Path] | tuple = (), data: str | None = None, model: str | None = None,
                  image_size: int | None = None, config: SelfLabelConfig | None = None,
                  eval_features: Sequence[str | Path] = (), eval_data: Sequence[str] = (),
                  evaluate: EvaluateConfig = EvaluateConfig(), force: bool = False,
                  show_progress: bool = True) -> dict[str, Any]:
    """The self-labeling stage from files: start from `scan_dir` (scan.pt, probabilities.npy of
    `run_scan`), train, and write the self-labeled clustering into `out_dir` (`nolabel.clustering`,
    the train images and every eval set, as `run_scan` does) beside selflabel.pt, probabilities.npy,
    predictions.npy and selflabel.json (skipped or not, the message, confident fractions).
    Returns metrics.json's content.

    Its inputs include SCAN's result (by hash): a SCAN result replaced since makes this one stale
    (refused without `force`); the same inputs return the finished clustering as it is. Training
    keeps a record of its own (training.record.json), so another eval set reuses it. Frozen features
    go through SCAN's PCA (`scan_dir/pca.npz`) when SCAN used one; network mode rebuilds `model` with
    the backbone weights SCAN saved in scan.pt."""
    from ..io import read_json, sha256_file
    from .scan.stage import (TRAINING_RECORD, _train_source, eval_sources, load_scan, stage_source,
                             write_head_clustering)

    scan_dir, out = Path(scan_dir), Path(out_dir)
    config = config or SelfLabelConfig()
    config.validate()
    distributed.resolve_device(config.device)  # a missing GPU fails here, before any file is written
    _, _, saved = load_scan(scan_dir / "scan.pt")
    if not (scan_dir / "probabilities.npy").is_file():
        raise NolabelError(f"{scan_dir}: no probabilities.npy; the SCAN stage has not finished")
    if data is not None and saved["modules"].get("backbone") is None:
        raise NolabelError(f"{scan_dir}: SCAN ran on frozen features; self-label with --features, not --data")
    model = model or saved["meta"].get("model")
    # what self-labeling reads of SCAN's result, by content
    training = {"scan": {name: sha256_file(scan_dir / name) for name in ("scan.pt", "probabilities.npy")},
                **stage_source(features, augmented, data, model, None, image_size),
                "config": record.without(asdict(config), "device")}
    evals = eval_sources(eval_features, eval_data, network=data is not None)
    stage_inputs = {"training": training, "evals": [e["inputs"] for e in evals], "evaluate": asdict(evaluate)}
    if record.begin(out, "selflabel", stage_inputs, force=force, what="a self-labeling clustering") is record.DONE:
        return read_json(out / "metrics.json")
    if not record.is_done(out, training, name=TRAINING_RECORD):
        _train_selflabel_stage(scan_dir, out, training, features, augmented, data, model, image_size, config,
                               show_progress)
    summary = read_json(out / "selflabel.json")
    assigner = {"kind": "head", "scan": os.path.relpath(scan_dir.resolve(), out.resolve()), "selflabel": ".",
                "mode": training["mode"], "image_size": image_size}
    scored = write_head_clustering(
        out, "SCAN + self-labeling", _train_source(features, data), np.load(out / "probabilities.npy", mmap_mode="r"),
        evals, assigner, evaluate, config.device, settings=stage_inputs,
        fitted={key: summary[key] for key in ("skipped", "confident_fraction_start", "confident_fraction_end")})
    record.finish(out, "selflabel", stage_inputs)
    return scored


def _train_selflabel_stage(scan_dir: Path, out: Path, training: dict[str, Any], features, augmented, data, model,
                           image_size, config: SelfLabelConfig, show_progress: bool) -> None:
    """Train from SCAN's kept head; write selflabel.pt, probabilities.npy, predictions.npy,
    selflabel.json and finish training.record.json."""
    from ..io import save_npy, write_json
    from .scan.stage import TRAINING_RECORD, apply_stage_pca, load_scan, load_stage_inputs

    if record.begin(out, "selflabel-training", training, force=True, name=TRAINING_RECORD) is record.START:
        (out / "selflabel_state.pt").unlink(missing_ok=True)  # a training state of other inputs
    heads, best, saved = load_scan(scan_dir / "scan.pt")
    scan_probabilities = np.load(scan_dir / "probabilities.npy")
    inputs = load_stage_inputs(features, augmented, data, model, None, image_size, saved["modules"].get("backbone"))
    inputs = apply_stage_pca(scan_dir, inputs)  # the heads' input space
    head = heads.single(best)
    if inputs["mode"] == "features":
        result = train_selflabel_features(inputs["features"], head, scan_probabilities, config, inputs["augmented"],
                                          out, show_progress)
    else:
        result = train_selflabel_network(inputs["images"], inputs["backbone"], head, scan_probabilities, config,
                                         image_size=inputs["image_size"], out_dir=out, show_progress=show_progress)
    summary = {
        "mode": inputs["mode"], "skipped": result.skipped, "message": result.message,
        "confident_fraction_start": result.confident_fraction,
        "confident_fraction_end": confident_fraction(result.probabilities, config.threshold),
        "seconds": result.seconds, "history": result.history, "config": asdict(config),
    }
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_npy(out / "probabilities.npy", np.asarray(result.probabilities, dtype=np.float32))
        save_npy(out / "predictions.npy", result.predictions.astype(np.int64))
        write_json(out / "selflabel.json", summary)
    record.finish(out, "selflabel-training", training, name=TRAINING_RECORD)
