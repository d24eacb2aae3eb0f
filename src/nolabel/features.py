"""Extract a backbone's features over a dataset into a FeatureStore - streaming and resumable.

The model is always in `eval()` under `torch.inference_mode()` with its deterministic eval
transform (resize + centre crop): no augmentation, no batch-norm statistics updates.

How resume stays exact: rows are cut into fixed batches (`batch_size` images, the last one
shorter), batch `b` always holds rows `b*B .. b*B+B-1`, and each process works through its own
contiguous run of batches. Features go straight into a preallocated memory-mapped array in
`DIR/.partial/`; after every few batches the array is flushed and a small progress file is
replaced atomically. A process killed at any moment resumes at the first batch not recorded as
flushed, so every batch is computed once with the same composition and the result is identical to
an uninterrupted run. Under torchrun the ranks split the batches the same way (a batch never
straddles two ranks), so N processes produce exactly the features of one.

Images that cannot be decoded are listed (`skipped.csv`) and left out of the final rows, or stop
the run at once with `on_bad_image="fail"`; work done up to then is kept for the next attempt.

The forward pass runs on a backend (`nolabel.models.backends`: torch, ONNX Runtime or OpenVINO;
`backend="auto"` takes the fastest installed one that computes in the asked precision) and the
backend is part of the store's record. Images of array datasets (Fashion-MNIST, CIFAR, digits,
STL-10) are resized and normalised a whole batch at a time in this process
(`ArrayEvalTransform`, bit for bit the PIL path's pixels); files are decoded in worker processes.
"""
from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import __version__, distributed, record
from .data import ArrayImageDataset, BadImageError, ImageDataset, load
from .errors import NolabelError
from .io import atomic_path, read_json, release_pages, save_npy, write_json
from .models import Backbone, backends, create
from .models.array_transform import ArrayEvalTransform
from .progress import progress_bar
from .store import FEATURES, LABELS, MANIFEST, FeatureStore, write_index, write_skipped

PARTIAL = ".partial"
DTYPES = ("float16", "float32")
PRECISIONS = backends.PRECISIONS


@dataclass(frozen=True)
class ExtractOptions:
    batch_size: int = 64
    image_size: int | None = None
    device: str = "cpu"
    dtype: str = "float16"
    precision: str = "fp32"
    backend: str = "auto"  # auto | torch | onnxruntime | openvino (see nolabel.models.backends)
    workers: int | None = None
    on_bad_image: str = "skip"
    # Flush the memory map and record progress at least this often: bounds the work a kill can
    # lose without paying an msync per batch (0 records after every batch).
    checkpoint_seconds: float = 20.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise NolabelError(f"batch size must be at least 1, got {self.batch_size}")
        if self.image_size is not None and self.image_size < 8:
            raise NolabelError(f"image size must be at least 8 pixels, got {self.image_size}")
        if self.dtype not in DTYPES:
            raise NolabelError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.precision not in PRECISIONS:
            raise NolabelError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.backend not in backends.CHOICES:
            raise NolabelError(f"backend must be one of {', '.join(backends.CHOICES)}, got {self.backend!r}")
        if self.on_bad_image not in ("skip", "fail"):
            raise NolabelError(f"on_bad_image must be 'skip' or 'fail', got {self.on_bad_image!r}")
        if self.workers is not None and self.workers < 0:
            raise NolabelError(f"workers must be >= 0, got {self.workers}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise NolabelError(f"device must be cpu, cuda or auto, got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise NolabelError("--device cuda was asked for but no CUDA device is available")


def default_workers() -> int:
    """Decoding processes: leave one core to the model, and never fewer than one worker."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 2) - 1))


def extract(
    data: str | ImageDataset,
    model: str | Backbone,
    out: str | os.PathLike,
    *,
    weights: str | None = None,
    allow_pickle: bool = False,
    download: bool = False,
    options: ExtractOptions = ExtractOptions(),
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FeatureStore:
    """Run `model` over `data` and write a complete FeatureStore at `out`.

    `data` is a dataset spec (see `nolabel datasets`) or a loaded dataset; `model` a registered
    name (see `nolabel models`) or a Backbone; `download` lets a published weight named by `model`
    be fetched from its URL when it is not cached. Returns the store; its `features` are (N, D) with
    N = images decoded successfully and D = the backbone's feature dimension.

    A store already finished at `out` with the same inputs (`extraction_inputs`) is returned as it
    is (`log` says so); one made with other inputs is replaced only with `force`. An unfinished
    extraction with the same inputs resumes. Notes on the backend (an export, a fallback) go to
    `log`, or to stderr without one.
    """
    out = Path(out)
    distributed.init()
    note = (log or backends._stderr) if distributed.is_main() else (lambda message: None)  # one process speaks
    log = log or (lambda message: None)
    dataset = load(data, on_bad_image=options.on_bad_image) if isinstance(data, str) else data
    if len(dataset) == 0:
        raise NolabelError(f"{dataset.spec}: the dataset holds no images")
    backbone = (create(model, weights=weights, allow_pickle=allow_pickle, download=download)
                if isinstance(model, str) else model)
    device = distributed.resolve_device(options.device)
    transform = backbone.eval_transform(options.image_size)
    dim = feature_dim(backbone, transform.image_size)
    backend = backends.resolve(options.backend, options.precision, device, note)
    inputs = extraction_inputs(dataset, backbone, transform, options, dim, backend)
    status = record.begin(out, "extract", inputs, force=force, what="a feature store")
    if status is record.DONE:
        log(f"{out}: up to date ({dataset.spec} through {backbone.name})")
        return FeatureStore.open(out)
    forward = backends.load(backbone, transform.image_size, backend=backend, precision=options.precision,
                            device=device, note=note, fallback=options.backend == "auto")
    if forward.backend != backend:  # auto's choice could not export this model (the note says why)
        inputs = extraction_inputs(dataset, backbone, transform, options, dim, forward.backend)
        status = record.begin(out, "extract", inputs, force=True, what="a feature store")
        if status is record.DONE:
            return FeatureStore.open(out)

    partial = out / PARTIAL
    if distributed.is_main():
        _prepare_partial(out, partial, len(dataset), dim, options.dtype, fresh=status is record.START)
    distributed.barrier()

    n_batches = -(-len(dataset) // options.batch_size)
    my_batches = distributed.shard(n_batches)
    started = time.perf_counter()
    _extract_batches(dataset, forward, transform, partial, my_batches, options, progress)
    distributed.barrier()
    if distributed.is_main():
        _finalize(out, partial, dataset, inputs, backbone, forward, time.perf_counter() - started)
    distributed.barrier()
    return FeatureStore.open(out)


def feature_dim(backbone: Backbone, image_size: int) -> int:
    """D at this input size, by one dry forward: for most backbones `feature_dim`, but not for all
    (raw pixels give 3*S*S; a timm model's pooled width is whatever its head-less forward returns)."""
    with torch.inference_mode():
        was_training = backbone.training
        out = backbone.eval()(torch.zeros(1, 3, image_size, image_size))
        backbone.train(was_training)
    if out.ndim != 2:
        raise NolabelError(f"{backbone.name}: expected (batch, D) features, got shape {tuple(out.shape)}")
    return int(out.shape[1])


def extraction_inputs(dataset: ImageDataset, backbone: Backbone, transform, options: ExtractOptions,
                      dim: int, backend: str) -> dict:
    """Everything that determines the features (the store's record): the data by content, the
    weights by hash, the whole eval transform, and how the numbers are computed (the backend that
    ran the forward pass - never "auto" - and its precision) and stored. The batch size is there
    because resume is exact only with the same batches."""
    report = backbone.load_report
    return {
        "dataset": dataset.spec,
        "data_fingerprint": dataset.fingerprint(),
        "n_images": len(dataset),
        "model": backbone.name,
        "weights_sha256": getattr(report, "sha256", None),
        "transform": transform.describe(),
        "dim": dim,
        "dtype": options.dtype,
        "precision": options.precision,
        "backend": backend,
        "batch_size": options.batch_size,
        "on_bad_image": options.on_bad_image,
    }


def _prepare_partial(out: Path, partial: Path, n: int, dim: int, dtype: str, fresh: bool) -> None:
    """The preallocated feature file in `partial`; `fresh` discards the store and any partial work
    that was there (the record has just been claimed for new inputs)."""
    if fresh:
        for name in (MANIFEST, FEATURES, LABELS):
            (out / name).unlink(missing_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
    if (partial / FEATURES).exists():
        return  # resume
    partial.mkdir(parents=True, exist_ok=True)
    with atomic_path(partial / FEATURES) as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, dim)).flush()


class _Decoded(Dataset):
    """Worker-side half of the transform: decode + resize + crop to uint8, never raising on a bad image."""

    def __init__(self, dataset: ImageDataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            image = self.dataset.image(i, min_size=self.transform.resize_to)
        except BadImageError as e:
            return i, None, f"{e.reason}"
        return i, self.transform.to_uint8(image), None


def _collate(samples):
    good = [(i, a) for i, a, _ in samples if a is not None]
    bad = [(i, reason) for i, a, reason in samples if a is None]
    rows = np.array([i for i, _ in good], dtype=np.int64)
    pixels = torch.from_numpy(np.stack([a for _, a in good])) if good else None
    return rows, pixels, bad


class _FileBatches:
    """Batches decoded in DataLoader worker processes: (rows, uint8 (B, S, S, 3) or None, bad images)."""

    def __init__(self, dataset: ImageDataset, transform, batches: list[range], workers: int):
        self.normalize = transform.normalize
        self.loader = DataLoader(
            _Decoded(dataset, transform),
            batch_sampler=[list(b) for b in batches],
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )

    def __iter__(self):
        return iter(self.loader)


class _ArrayBatches:
    """Batches of an in-memory dataset, resized + cropped here a whole batch at a time (exactly the
    PIL path's pixels, ~50 us an image where PIL in a worker takes ~170): (rows, float (B, C, S, S)
    holding uint8 values, no bad images). Worker processes would only compete with the forward pass
    for the same cores."""

    def __init__(self, dataset: ArrayImageDataset, transform, batches: list[range]):
        self.images, self.batches = dataset.images, batches
        self.transform = ArrayEvalTransform(transform, *dataset.images.shape[1:3])
        self.normalize = self.transform.normalize

    def __iter__(self):
        for b in self.batches:
            yield np.arange(b.start, b.stop), self.transform._resized(self.images[b.start:b.stop]), []


def _extract_batches(dataset, forward: backends.Forward, transform, partial, batches: range, options, progress):
    progress_file = partial / f"progress.rank{distributed.rank()}.json"
    state = read_json(progress_file) if progress_file.exists() else {"next_batch": batches.start, "skipped": []}
    first = max(state["next_batch"], batches.start)
    if first >= batches.stop:
        return
    B, n = options.batch_size, len(dataset)
    batch_rows = [range(b * B, min((b + 1) * B, n)) for b in range(first, batches.stop)]
    if isinstance(dataset, ArrayImageDataset):
        source = _ArrayBatches(dataset, transform, batch_rows)
    else:
        workers = default_workers() if options.workers is None else options.workers
        source = _FileBatches(dataset, transform, batch_rows, workers)
    features = np.load(partial / FEATURES, mmap_mode="r+")

    def record(next_batch: int) -> None:
        features.flush()
        release_pages(features)  # written pages are on disk now; don't let them pile up in RSS
        write_json(progress_file, {"next_batch": next_batch, "skipped": state["skipped"]})

    threads = torch.get_num_threads()

    def prepared():
        """The forward pass's inputs, made in a background thread while the previous batch runs, on one
        core: its small tensor operations gain nothing from a second thread, and a thread team that
        has to meet at every operation stalls while the forward pass holds the cores."""
        torch.set_num_threads(1)  # this thread's OpenMP team (torch keeps it per thread)
        try:
            with torch.inference_mode():
                for rows, pixels, bad in source:
                    x = None if pixels is None else source.normalize(pixels.to(forward.device, non_blocking=True))
                    yield rows, x, bad
        finally:
            torch.set_num_threads(threads)  # the default that threads started later take

    remaining = sum(len(b) for b in batch_rows)
    bar = progress_bar(total=remaining, desc="extract", unit="img", enabled=progress, smoothing=0.1)
    last_record = time.monotonic()
    with _Prefetch(prepared(), depth=2) as inputs, torch.inference_mode():
        for b, (rows, x, bad) in enumerate(inputs, start=first):
            for i, reason in bad:
                item = dataset.item_names[i]
                if options.on_bad_image == "fail":
                    record(b)
                    raise NolabelError(
                        f"{item}: unreadable image ({reason}); fix or remove it, or pass "
                        "--on-bad-image skip to leave such images out"
                    )
                state["skipped"].append([int(i), item, reason])
            if x is not None:
                features[rows] = forward(x).astype(options.dtype, copy=False)
            bar.update(len(rows) + len(bad))
            if time.monotonic() - last_record >= options.checkpoint_seconds:
                record(b + 1)
                last_record = time.monotonic()
    record(batches.stop)
    bar.close()


class _Prefetch:
    """Iterate `items` in a background thread, `depth` items ahead; errors are raised in the consumer,
    and leaving the `with` block stops the thread."""

    _END = object()

    def __init__(self, items, depth: int = 2) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(items,), daemon=True, name="nolabel-prefetch")

    def _run(self, items) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put((self._END, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _put(self, entry) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __enter__(self):
        self.thread.start()
        return self

    def __iter__(self):
        while True:
            item, error = self.queue.get()
            if error is not None:
                raise error
            if item is self._END:
                return
            yield item

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _finalize(out: Path, partial: Path, dataset, inputs: dict, backbone: Backbone, forward: backends.Forward,
              seconds: float) -> None:
    skipped = []
    for progress_file in sorted(partial.glob("progress.rank*.json")):
        skipped.extend(read_json(progress_file)["skipped"])
    skipped.sort()
    bad_rows = np.array([row for row, _, _ in skipped], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(dataset)), bad_rows)

    if len(keep) == 0:
        raise NolabelError(f"{dataset.spec}: no image could be read (see {partial}/progress.*.json)")
    if len(bad_rows) == 0:
        os.replace(partial / FEATURES, out / FEATURES)
    else:
        _compact(partial / FEATURES, out / FEATURES, keep)
    save_npy(out / LABELS, dataset.labels[keep].astype(np.int64))
    write_index(out, [dataset.item_names[i] for i in keep])
    write_skipped(out, [(item, reason) for _, item, reason in skipped])
    info = {
        "weights": getattr(backbone.load_report, "source", None),
        "seconds": round(seconds, 2),
        "images_per_second": round(len(dataset) / max(seconds, 1e-9), 1),
        "world_size": distributed.world_size(),
        "nolabel_version": __version__,
        "torch_version": torch.__version__,
        "backend_version": forward.info().get("backend_version"),
        "exported_model": forward.info().get("exported"),
    }
    write_json(out / MANIFEST, {**inputs, **info, "classes": list(dataset.classes), "n": int(len(keep)),
                                "n_skipped": len(skipped), "complete": True})
    record.finish(out, "extract", inputs, **info)
    shutil.rmtree(partial)


def _compact(source: Path, target: Path, keep: np.ndarray, chunk: int = 65536) -> None:
    """Copy the kept rows into a new array, chunk by chunk (the source may not fit in RAM)."""
    full = np.load(source, mmap_mode="r")
    with atomic_path(target) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=full.dtype, shape=(len(keep), full.shape[1]))
        for start in range(0, len(keep), chunk):
            rows = keep[start:start + chunk]
            out[start:start + len(rows)] = full[rows]
        out.flush()
        del out
