"""Import torchvision (and so timm) where its compiled extension cannot load.

Some machines pair a CPU build of torch with a CUDA build of torchvision; importing torchvision then
fails with "operator torchvision::nms does not exist" because the C extension that would register
that operator cannot load. nolabel uses only torchvision's pure-Python parts (model definitions,
transforms), so when - and only when - the normal import fails for that reason we declare the two
operator schemas ourselves and import again. Detection ops then fail at call time, which nolabel
never makes.
"""
from __future__ import annotations

import sys
import types

_MISSING_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_fragment = None  # keeps the torch.library registration alive for the process lifetime


def import_torchvision() -> types.ModuleType:
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        _declare_missing_ops()
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        import torchvision
    return torchvision


def import_timm() -> types.ModuleType:
    import_torchvision()
    import timm

    return timm


def _declare_missing_ops() -> None:
    global _fragment
    import torch

    if _fragment is None:
        _fragment = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _MISSING_OPS.values():
            _fragment.define(schema)
