"""Where a backbone's forward pass runs: torch, ONNX Runtime or OpenVINO, behind one interface.

    forward = backends.load(backbone, image_size=96, backend="auto", precision="fp32")
    features = forward(x)        # normalised float (B, 3, S, S), Tensor or array -> (B, D) float32 array
    forward.backend              # "openvino": what "auto" chose

- `torch`: the backbone itself, channels_last on a CPU, bf16 by autocast; fp32 with TF32 turned off
  (cuDNN's default for fp32 convolutions on a GPU). The only backend on a GPU.
- `onnxruntime`: the backbone exported to ONNX, run by ONNX Runtime's CPU provider; fp32 only
  (its CPU kernels have no bf16 convolutions).
- `openvino`: the same ONNX graph converted to OpenVINO's format (weights kept in fp32), run by
  its CPU plugin with `INFERENCE_PRECISION_HINT` set to f32 or bf16 explicitly - left unset, it
  computes in bf16 on any CPU that has bf16 instructions - and checked after compiling; bf16 only
  where the CPU has bf16 instructions.

`auto` takes the first of `RANKING[precision]` that is installed and supports the precision and
device (GPU: torch), falling back with a one-line note, and to torch in the end. The ranking is
measured (BENCHMARKS.md, "Feature extraction"): on a 2-vCPU Zen 5 with avx512_bf16, OpenVINO ran
EfficientNet-Lite0 at 96 px 4.5x faster than torch in fp32 and 4x in bf16, ONNX Runtime 4x (fp32).

Exports are cached under $NOLABEL_CACHE/exported (default ~/.cache/nolabel/exported), one folder per
(backend format, model, its structure, its weights by hash, input size, precision, exporter and
converter versions), named after them and a fingerprint of them. The folder is written under a
temporary name and renamed into place when complete, with `export.json`: what the export was made
from (`inputs`) and the sha256 of each file. It is reused while the record matches and the files
hash to it; anything else is exported again. The whole forward, pooling and normalisation included,
is in the graph (multi-level models too), and each new export is checked once against torch on a
random batch before it is used (relative error < 1e-3 in fp32).
"""
from __future__ import annotations

import abc
import contextlib
import copy
import functools
import hashlib
import importlib
import inspect
import io
import os
import re
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NolabelError

BACKENDS = ("torch", "onnxruntime", "openvino")
CHOICES = ("auto", *BACKENDS)
PRECISIONS = ("fp32", "bf16")
# auto's order, fastest first (measured, see the module docstring); torch computes anything
RANKING = {"fp32": ("openvino", "onnxruntime", "torch"), "bf16": ("openvino", "torch")}
OPSET = 17
EXPORT_RECORD = "export.json"
_FILES = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino-ir"}
_EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
# the ONNX export needs `onnx`, and `onnxscript` for torch.export's exporter (see export_onnx)
_MODULES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino", "onnx", "onnxscript")}
CHECK_TOLERANCE = 1e-3  # an fp32 export must agree with torch within this relative error


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("NOLABEL_CACHE") or Path.home() / ".cache" / "nolabel") / "exported"


def _import(name: str):
    """Import a backend's package (tests replace this to pretend one is missing)."""
    return importlib.import_module(name)


def _missing(backend: str) -> str | None:
    """Why `backend` cannot be imported here (None: it can)."""
    for module in _MODULES.get(backend, ()):
        try:
            _import(module)
        except ImportError:
            return (f"{backend} needs the Python package {module!r} (pip install 'nolabel[{_EXTRA[backend]}]')")
    return None


def unsupported(backend: str, precision: str, device: str | torch.device = "cpu") -> str | None:
    """Why `backend` cannot compute in `precision` on `device` here (None: it can), without exporting."""
    if backend not in BACKENDS:
        raise NolabelError(f"backend must be one of {', '.join(CHOICES)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise NolabelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend == "torch":
        return None
    if torch.device(device).type != "cpu":
        return f"{backend} runs on the CPU here; on a GPU extraction runs in torch"
    missing = _missing(backend)
    if missing:
        return missing
    if precision == "bf16":
        if backend == "onnxruntime":
            return "onnxruntime computes in fp32 only on a CPU (use --precision fp32, or openvino or torch for bf16)"
        if "BF16" not in _openvino_capabilities():
            return "openvino computes in bf16 only on CPUs with bf16 instructions (avx512_bf16, AMX); this one has none"
    return None


@functools.lru_cache(maxsize=1)
def _openvino_capabilities() -> tuple[str, ...]:
    return tuple(_import("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def resolve(backend: str, precision: str, device: str | torch.device = "cpu",
            note: Callable[[str], None] = _stderr) -> str:
    """The backend `backend` means here: itself if it can compute in `precision` on `device` (else a
    NolabelError saying why), or for "auto" the first of `RANKING[precision]` that can; `note` gets a
    line when auto falls back to torch on a CPU."""
    if backend != "auto":
        reason = unsupported(backend, precision, device)
        if reason:
            raise NolabelError(f"--backend {backend}: {reason}")
        return backend
    if torch.device(device).type != "cpu":
        return "torch"
    reasons = []
    for candidate in RANKING[precision]:
        reason = unsupported(candidate, precision, device)
        if reason is None:
            if candidate == "torch" and reasons:
                note(f"note: extracting with torch ({'; '.join(reasons)})")
            return candidate
        reasons.append(reason)
    raise AssertionError("torch supports every precision")


class Forward(abc.ABC):
    """A backbone's forward pass on one backend: normalised float (B, 3, S, S) -> float32 (B, D) array.

    `backend`, `precision`, `device` (where inputs go), `path` (the exported model; None for
    torch), `info()` (JSON-ready facts for a manifest)."""

    backend: str
    precision: str
    device: torch.device = torch.device("cpu")
    path: Path | None = None

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """The features of one batch."""

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision,
                "exported": str(self.path) if self.path else None}


class TorchForward(Forward):
    """The backbone in eval mode under inference_mode; on a CPU (or in bf16) in channels_last, bf16 by
    autocast - the extractor's path before other backends existed."""

    backend = "torch"

    def __init__(self, backbone: torch.nn.Module, precision: str = "fp32", device: str | torch.device = "cpu"):
        self.precision, self.device = precision, torch.device(device)
        self.channels_last = self.device.type == "cpu" or precision == "bf16"
        self.module = backbone.to(self.device).eval()
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        reduced = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16" else _full_fp32()
        with torch.inference_mode(), reduced:
            return self.module(x).float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backend_version": torch.__version__}


@contextlib.contextmanager
def _full_fp32():
    """fp32 convolutions and matrix products computed in fp32: cuDNN runs fp32 convolutions in TF32
    by default (on Ampere and later GPUs, ~1e-3 relative error), and `torch.set_float32_matmul_precision`
    lets matrix products use TF32 or bf16. Both settings are restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous().numpy()  # channels_last tensors become NCHW here
    return np.ascontiguousarray(x, dtype=np.float32)


class OnnxRuntimeForward(Forward):
    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        ort = _import("onnxruntime")
        self.path, self.precision, self.threads, self.version = Path(path), "fp32", threads, ort.__version__
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle threads sleep instead of spinning: the input pipeline shares the cores between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": _as_numpy(x)})[0]

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backend_version": self.version, "threads": self.threads}


class OpenVinoForward(Forward):
    """OpenVINO's CPU plugin in throughput mode: a batch is split over its streams (as many as it
    finds best for `threads`, each on its own cores) and run asynchronously; the split depends only
    on the batch size and the thread count, so a batch always gives the same features."""

    backend = "openvino"

    def __init__(self, path: Path, precision: str, threads: int):
        ov = _import("openvino")
        self.path, self.precision, self.threads, self.version = Path(path), precision, threads, ov.__version__
        want = ov.Type.bf16 if precision == "bf16" else ov.Type.f32
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", {
            "INFERENCE_PRECISION_HINT": want, "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads})
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if got != want:
            raise NolabelError(f"openvino compiled {self.path} for {got}, not the {want} asked for")
        self.requests = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self.queue.set_callback(self._done)
        self.dim = self.compiled.output(0).get_partial_shape()[1].get_length()

    @staticmethod
    def _done(request, userdata) -> None:
        out, start, stop = userdata
        out[start:stop] = request.get_output_tensor(0).data

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = _as_numpy(x)
        out = np.empty((len(x), self.dim), dtype=np.float32)
        bounds = np.linspace(0, len(x), min(self.requests, len(x)) + 1).round().astype(int)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            self.queue.start_async({0: x[start:stop]}, (out, int(start), int(stop)))
        self.queue.wait_all()
        return out

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backend_version": self.version, "threads": self.threads,
                "streams": self.requests}


def load(backbone: torch.nn.Module, image_size: int, *, backend: str = "auto", precision: str = "fp32",
         device: str | torch.device = "cpu", threads: int | None = None, note: Callable[[str], None] = _stderr,
         fallback: bool | None = None) -> Forward:
    """`backbone`'s forward pass at `image_size` on `backend` (see the module docstring), exported
    into the cache or taken from it. A backend that cannot run this model raises a NolabelError,
    unless `fallback` (default: for "auto"), which moves on down `RANKING` with a `note`: a caller
    that resolved "auto" itself passes the name with `fallback=True`. Check `.backend` for what runs."""
    threads = threads or torch.get_num_threads()
    fallback = backend == "auto" if fallback is None else fallback
    name = resolve(backend, precision, device, note)
    ranking = RANKING[precision]
    candidates = [name] + (list(ranking[ranking.index(name) + 1:]) if fallback and name in ranking else [])
    for candidate in candidates:
        if candidate != name and unsupported(candidate, precision, device):
            continue
        if candidate == "torch":
            return TorchForward(backbone, precision, device)
        try:
            path = exported(backbone, image_size, candidate, precision, note=note)
            if candidate == "onnxruntime":
                return OnnxRuntimeForward(path, threads)
            return OpenVinoForward(path, precision, threads)
        except Exception as e:  # an export or a compile that fails: say why, and where auto goes next
            if not fallback:
                raise NolabelError(f"--backend {candidate}: {getattr(backbone, 'name', 'the model')} cannot run "
                                   f"there ({e})") from e
            note(f"note: {candidate} cannot run {getattr(backbone, 'name', 'the model')} ({_first_line(e)}); "
                 "trying the next backend")
    raise AssertionError("the ranking ends with torch")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


# --------------------------------------------------------------------------- the export cache

def export_inputs(backbone: torch.nn.Module, image_size: int, backend: str, precision: str) -> dict[str, Any]:
    """What an export is made from: it is redone whenever any of these changes."""
    inputs = {
        "format": _FORMATS[backend],
        "model": getattr(backbone, "name", type(backbone).__name__),
        "structure_sha256": structure_sha256(backbone),
        "state_sha256": state_sha256(backbone),
        "image_size": int(image_size),
        "precision": precision,
        "opset": OPSET,
        "torch": torch.__version__,
    }
    if backend == "openvino":
        inputs["openvino"] = _import("openvino").__version__
    return inputs


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, values; any memory format)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def structure_sha256(module: torch.nn.Module) -> str:
    """sha256 of the network's structure: every submodule's name, class, settings (plain attributes
    such as kernel sizes, strides, pooling grids) and its class's source code."""
    h = hashlib.sha256()
    sources: dict[type, str] = {}
    for name, m in module.named_modules():
        cls = type(m)
        settings = {k: v for k, v in sorted(vars(m).items())
                    if not k.startswith("_") and k != "training" and _plain(v)}
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{settings!r};".encode())
        if cls not in sources:
            try:
                sources[cls] = inspect.getsource(cls)
            except (OSError, TypeError):
                sources[cls] = cls.__qualname__
    for cls in sorted(sources, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        h.update(sources[cls].encode())
    return h.hexdigest()


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _valid(folder: Path, fingerprint: str) -> bool:
    from ..io import read_json

    try:
        rec = read_json(folder / EXPORT_RECORD)
        return rec.get("fingerprint") == fingerprint and bool(rec.get("files")) and all(
            (folder / name).is_file() and _sha256(folder / name) == digest for name, digest in rec["files"].items())
    except (NolabelError, OSError, AttributeError, TypeError):
        return False


def exported(backbone: torch.nn.Module, image_size: int, backend: str, precision: str,
             note: Callable[[str], None] = _stderr) -> Path:
    """The exported model file for `backend` (model.onnx, or model.xml beside model.bin), from the
    cache when its record matches, else exported now."""
    from .. import record
    from ..io import write_json

    if backend not in _FILES:
        raise NolabelError(f"nothing to export for backend {backend!r}")
    inputs = export_inputs(backbone, image_size, backend, precision)
    fingerprint = record.fingerprint(inputs)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", inputs["model"])
    folder = cache_dir() / f"{slug}-{image_size}px-{backend}-{precision}-{fingerprint[:16]}"
    main_file = folder / _FILES[backend][0]
    if _valid(folder, fingerprint):
        return main_file
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        started = time.perf_counter()
        info = _export(backbone, image_size, backend, precision, tmp)
        write_json(tmp / EXPORT_RECORD, {
            "fingerprint": fingerprint, "inputs": record.canonical(inputs),
            "files": {name: _sha256(tmp / name) for name in _FILES[backend]},
            "info": {**info, "seconds": round(time.perf_counter() - started, 2)}})
        if folder.exists():  # an older, incomplete or altered export of the same inputs
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _valid(folder, fingerprint):  # another process finished the same export first: take it
                raise
        note(f"exported {inputs['model']} ({image_size} px) for {backend} {precision} in "
             f"{time.perf_counter() - started:.1f} s: {folder}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return main_file


def _export(backbone: torch.nn.Module, image_size: int, backend: str, precision: str, folder: Path) -> dict:
    """Write `_FILES[backend]` into `folder`, check the result against torch, return facts for the record."""
    module = copy.deepcopy(backbone).cpu().float().eval().to(memory_format=torch.contiguous_format)
    onnx_path = folder / "model.onnx"
    exporter = export_onnx(module, image_size, onnx_path)
    if backend == "openvino":
        ov = _import("openvino")
        model = ov.Core().read_model(str(onnx_path))
        model.set_rt_info("bf16" if precision == "bf16" else "f32", ["runtime_options", "INFERENCE_PRECISION_HINT"])
        ov.save_model(model, str(folder / "model.xml"), compress_to_fp16=False)  # weights stay fp32
        onnx_path.unlink()
        check: Forward = OpenVinoForward(folder / "model.xml", "fp32", torch.get_num_threads())
    else:
        check = OnnxRuntimeForward(onnx_path, torch.get_num_threads())
    error = _check(module, check, image_size)
    return {"exporter": exporter, "check_max_relative_error_fp32": float(f"{error:.3g}")}


def export_onnx(module: torch.nn.Module, image_size: int, path: Path) -> str:
    """`module` (eval, fp32, on the CPU) to a single ONNX file with a dynamic batch dimension: input
    "x" (B, 3, S, S), output "features" (B, D). Returns the exporter that wrote it:

    - "torchscript", torch's TorchScript exporter (deprecated, still in torch 2.13; fast, needs no
      onnxscript), when it exports the model with static spatial shapes;
    - else "dynamo", torch.export's exporter (needs onnxscript; 2-6x slower to export): it
      specialises every shape but the batch, where the TorchScript one leaves shape arithmetic in
      the graph (TF "same" padding computed at run time: EfficientNet-Lite0 ran 40% slower in ONNX
      Runtime) or fails (adaptive pooling to a grid, antialiased position-embedding resize).
    """
    x = torch.zeros(2, 3, image_size, image_size)
    names = {"input_names": ["x"], "output_names": ["features"]}
    legacy_error: Exception | None = None
    try:
        with _quiet():
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
                              dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}}, **names)
        onnx = _import("onnx")
        if not any(node.op_type == "Shape" for node in onnx.load(str(path), load_external_data=False).graph.node):
            return "torchscript"
    except Exception as e:
        legacy_error = e
    dynamo_path = path.with_name(f".dynamo.{path.name}")
    try:
        with _quiet():
            torch.onnx.export(module, (x,), str(dynamo_path), dynamo=True, external_data=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, **names)
        os.replace(dynamo_path, path)
        return "dynamo"
    except Exception as e:
        dynamo_path.unlink(missing_ok=True)
        if legacy_error is None:  # the TorchScript export, with shape arithmetic, will do
            return "torchscript"
        raise NolabelError(f"ONNX export failed (TorchScript exporter: {_first_line(legacy_error)}; "
                           f"torch.export: {_first_line(e)})") from e


@contextlib.contextmanager
def _quiet():
    """Silence the exporters: warnings, progress lines, and the graph dump the TorchScript exporter
    writes from C++ straight to file descriptor 2 when it fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _check(module: torch.nn.Module, forward: Forward, image_size: int) -> float:
    """Worst relative L2 error of `forward` against `module` on a fixed random batch of 3."""
    x = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(x).float().numpy()
    got = forward(x)
    if got.shape != expected.shape:
        raise NolabelError(f"the exported model returns {got.shape}, torch {expected.shape}")
    norms = np.maximum(np.linalg.norm(expected, axis=1), 1e-12)
    error = float((np.linalg.norm(got - expected, axis=1) / norms).max())
    if not error <= CHECK_TOLERANCE:
        raise NolabelError(f"the exported model disagrees with torch (relative error {error:.2g} in fp32)")
    return error
