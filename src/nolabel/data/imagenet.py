"""ImageNet class folders, SCAN's ImageNet-50/100/200 subsets, and ObjectNet.

ImageNet: PATH/train/<wnid>/*.JPEG and PATH/val/<wnid>/* (the validation images sorted into class
folders). Labels follow the sorted wnids of the split's class folders, as torchvision's ImageFolder
does, so a full ImageNet gets the usual 0..999 indices. Class names come from LOC_synset_mapping.txt
(in PATH or its parent) when present, else they are the wnids.

ImageNet-50/100/200 (SCAN): only the classes in SCAN's lists (shipped in imagenet_subsets/), labelled
0..k-1 in sorted-wnid order, named as in those lists.

ObjectNet 1.0: PATH/images/<folder>/*.png and PATH/mappings/. Labels are the sorted folder names
(313 classes), named by folder_to_objectnet_label.json. Every ObjectNet image has a 1-pixel red frame
that is not part of the photo: it is cropped away when an image is read.
`ds.imagenet_class_indices` maps each of the 113 ObjectNet classes that overlap ImageNet-1k to its
ImageNet class indices in sorted-wnid order, for scoring ImageNet-trained models on ObjectNet.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import NolabelError
from ..io import read_json
from .dataset import FileImageDataset, Request, path_inside
from .folders import class_folder_dataset
from .images import is_image_file

SPLITS = ("train", "val")
SUBSET_FILES = {"imagenet50": "imagenet_50.txt", "imagenet100": "imagenet_100.txt",
                "imagenet200": "imagenet_200.txt"}
SYNSET_MAPPING = "LOC_synset_mapping.txt"
OBJECTNET_BORDER = 1
OBJECTNET_MAPPINGS = ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json",
                      "pytorch_to_imagenet_2012_id.json", "imagenet_to_label_2012_v2")
IMAGENET_CLASSES = 1000


class ObjectNetDataset(FileImageDataset):
    """ObjectNet images (frame cropped) with `imagenet_class_indices`:
    {ObjectNet label: [ImageNet class indices, sorted-wnid order]} for the 113 overlapping classes."""

    def __init__(self, *args, imagenet_class_indices: dict[int, list[int]], **kwargs):
        super().__init__(*args, **kwargs)
        self.imagenet_class_indices = imagenet_class_indices


def load_imagenet(req: Request) -> FileImageDataset:
    split_dir = _split_dir(req)
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        hint = (" (it holds loose images: sort them into <wnid>/ folders first)"
                if any(is_image_file(p.name) for p in split_dir.iterdir()) else "")
        raise NolabelError(f"{req.spec}: {split_dir} has no <wnid> class folders{hint}")
    names = _synset_names(req.root)
    return class_folder_dataset(req, req.root, class_dirs, [names.get(d.name, d.name) for d in class_dirs])


def load_imagenet_subset(req: Request) -> FileImageDataset:
    split_dir = _split_dir(req)
    subset = subset_classes(req.name)
    wnids = sorted(subset)
    # the wnids come from a file (shipped with nolabel, but still a file): joined like any such name
    subset_file = _subset_file(req.name)
    class_dirs = [path_inside(split_dir, w, subset_file) for w in wnids]
    missing = [w for w, d in zip(wnids, class_dirs) if not d.is_dir()]
    if missing:
        raise NolabelError(f"{req.spec}: {split_dir} lacks {len(missing)} of the {len(wnids)} class "
                           f"folders of {req.name}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return class_folder_dataset(req, req.root, class_dirs, [subset[w] for w in wnids])


def subset_classes(name: str) -> dict[str, str]:
    """SCAN's class list for `name` ("imagenet50", ...): {wnid: class name}."""
    text = _subset_file(name).read_text()
    return dict(line.split(" ", 1) for line in text.splitlines() if line.strip())


def _subset_file(name: str):
    return resources.files(__package__).joinpath("imagenet_subsets", SUBSET_FILES[name])


def load_objectnet(req: Request) -> ObjectNetDataset:
    root = req.folder()
    images_dir, mappings_dir = root / "images", root / "mappings"
    layout = "ObjectNet 1.0 layout: PATH/images/<folder>/*.png and PATH/mappings/*.json"
    if not images_dir.is_dir():
        raise NolabelError(f"{req.spec}: no images/ folder in {root} ({layout})")
    for name in OBJECTNET_MAPPINGS:
        if not (mappings_dir / name).is_file():
            raise NolabelError(f"{req.spec}: mapping file {name} not found in {mappings_dir} ({layout})")
    folder_file = mappings_dir / "folder_to_objectnet_label.json"
    folder_to_label = read_json(folder_file)
    folders = sorted(folder_to_label)
    class_dirs = [path_inside(images_dir, f, folder_file) for f in folders]
    missing = [f for f, d in zip(folders, class_dirs) if not d.is_dir()]
    if missing:
        raise NolabelError(f"{req.spec}: {images_dir} lacks {len(missing)} class folders named in "
                           f"folder_to_objectnet_label.json: {', '.join(missing[:5])}")
    classes = [folder_to_label[f] for f in folders]
    return class_folder_dataset(
        req, root, class_dirs, classes, border=OBJECTNET_BORDER,
        dataset_type=ObjectNetDataset, imagenet_class_indices=_objectnet_to_imagenet(mappings_dir, classes),
    )


def _objectnet_to_imagenet(mappings_dir: Path, classes: list[str]) -> dict[int, list[int]]:
    """Chain ObjectNet's mapping files: ObjectNet name -> ImageNet names ("; "-separated) -> line
    of imagenet_to_label_2012_v2 (the ILSVRC2012 id - 1) -> index in sorted-wnid order."""
    to_imagenet_names = read_json(mappings_dir / "objectnet_to_imagenet_1k.json")
    sorted_to_2012 = read_json(mappings_dir / "pytorch_to_imagenet_2012_id.json")
    names_2012 = (mappings_dir / "imagenet_to_label_2012_v2").read_text().splitlines()
    if len(names_2012) != IMAGENET_CLASSES or len(sorted_to_2012) != IMAGENET_CLASSES:
        raise NolabelError(f"{mappings_dir}: imagenet_to_label_2012_v2 and pytorch_to_imagenet_2012_id.json "
                           f"must each list {IMAGENET_CLASSES} classes")
    id_2012_to_sorted = {int(v): int(k) for k, v in sorted_to_2012.items()}
    ids_by_name: dict[str, list[int]] = {}
    for id_2012, name in enumerate(names_2012):
        ids_by_name.setdefault(name.strip(), []).append(id_2012)
    label_of = {name: label for label, name in enumerate(classes)}
    result = {}
    for objectnet_name, imagenet_names in to_imagenet_names.items():
        if objectnet_name not in label_of:
            raise NolabelError(f"{mappings_dir}/objectnet_to_imagenet_1k.json: '{objectnet_name}' is "
                               "not a class of folder_to_objectnet_label.json")
        indices = []
        for name in imagenet_names.split("; "):
            ids = ids_by_name.get(name)
            if ids is None or len(ids) != 1 or ids[0] not in id_2012_to_sorted:
                raise NolabelError(f"{mappings_dir}: ImageNet class '{name}' (for '{objectnet_name}') is "
                                   "missing from or ambiguous in imagenet_to_label_2012_v2")
            indices.append(id_2012_to_sorted[ids[0]])
        result[label_of[objectnet_name]] = sorted(indices)
    return dict(sorted(result.items()))


def _split_dir(req: Request) -> Path:
    root = req.folder()
    split_dir = root / req.split
    if not split_dir.is_dir():
        raise NolabelError(f"{req.spec}: no {req.split}/ folder in {root} (expected {root}/{req.split}/<wnid>/...)")
    return split_dir


def _synset_names(root: Path) -> dict[str, str]:
    for folder in (root, root.parent):
        path = folder / SYNSET_MAPPING
        if path.is_file():
            lines = path.read_text().splitlines()
            return dict(line.strip().split(" ", 1) for line in lines if " " in line.strip())
    return {}

