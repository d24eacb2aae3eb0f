"""Image-file datasets from plain folders: `folder:PATH` (one subfolder per class) and
`images:PATH` (every image below PATH, unlabelled).

Images are found by extension (`images.IMAGE_EXTENSIONS`, case-insensitive); other files are
ignored. A file with an image extension that does not decode is a bad image, reported when read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import NolabelError
from .dataset import FileImageDataset, Request
from .images import list_images


def load_class_folders(req: Request) -> FileImageDataset:
    """Labels from the class subfolders' names, in sorted order (as torchvision's ImageFolder);
    images in a class folder's own subfolders belong to that class. Loose files in PATH are ignored."""
    root = req.folder()
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise NolabelError(f"{req.spec}: {root} has no class subfolders; for a folder of "
                           f"unlabelled images use images:{root}")
    return class_folder_dataset(req, root, class_dirs, [d.name for d in class_dirs])


def load_unlabelled_images(req: Request) -> FileImageDataset:
    root = req.folder()
    paths = list_images(root)
    if not paths:
        raise NolabelError(f"{req.spec}: no image files under {root}")
    return FileImageDataset(req.spec, root, paths, np.full(len(paths), -1, np.int64), [], req.on_bad_image)


def class_folder_dataset(req: Request, root: Path, class_dirs: list[Path], classes: list[str],
                         border: int = 0, dataset_type: type = FileImageDataset, **extra) -> FileImageDataset:
    """A dataset whose class `k` is every image under `class_dirs[k]`; `root` anchors item names."""
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = list_images(class_dir)
        if not found:
            raise NolabelError(f"{req.spec}: class folder {class_dir} holds no images")
        paths.extend(found)
        labels.extend([label] * len(found))
    return dataset_type(req.spec, root, paths, np.array(labels, np.int64), classes,
                        on_bad_image=req.on_bad_image, border=border, **extra)
