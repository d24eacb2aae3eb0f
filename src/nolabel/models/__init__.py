"""Backbones: a registry of architectures and published self-supervised weights, safe checkpoint loading.

    from nolabel import models
    backbone = models.create("resnet50.mocov2_800ep", weights="moco_v2_800ep_pretrain.pth.tar")
    transform = backbone.eval_transform()          # resize, centre crop, normalise
    features = backbone(transform(image)[None])    # (1, 2048)
    print(backbone.load_report)                    # format, tensors loaded, heads dropped

`list_models()` lists architectures and weight records; `register_model(name, ...)` adds an
architecture; `save_checkpoint(backbone, path)` writes nolabel's own checkpoint format.
"""
from .backbone import Backbone, EvalTransform, Preprocessing
from .checkpoints import LoadReport, load_weights, read_checkpoint, save_checkpoint
from .registry import ModelInfo, architecture_names, create, feature_parts, list_models, register_model
from .weights import PUBLISHED, WeightRecord, cache_dir
from . import architectures  # noqa: E402,F401  (registers the built-in models)

__all__ = [
    "Backbone", "EvalTransform", "LoadReport", "ModelInfo", "PUBLISHED", "Preprocessing", "WeightRecord",
    "architecture_names", "cache_dir", "create", "feature_parts", "list_models", "load_weights", "read_checkpoint",
    "register_model", "save_checkpoint",
]
