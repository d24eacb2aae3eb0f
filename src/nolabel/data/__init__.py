"""Dataset readers: one spec string -> an `ImageDataset` of RGB images and integer labels.

    >>> ds = load("fashion-mnist:test")        # or "cifar10:/data/cifar:train", "folder:/photos", ...
    >>> image, label = ds[0]                    # PIL.Image (RGB), int (-1 when unknown)
    >>> ds.labels, ds.classes, ds.item_names    # known without decoding any image

`list_specs()` lists the specs (also `nolabel datasets`). Nothing here imports torch.
"""
from .dataset import ArrayImageDataset, FileImageDataset, ImageDataset
from .images import IMAGE_EXTENSIONS, BadImageError, open_image, to_rgb
from .imagenet import ObjectNetDataset
from .registry import SpecInfo, list_specs, load, parse_spec

__all__ = [
    "ArrayImageDataset", "BadImageError", "FileImageDataset", "IMAGE_EXTENSIONS", "ImageDataset",
    "ObjectNetDataset", "SpecInfo", "list_specs", "load", "open_image", "parse_spec", "to_rgb",
]
