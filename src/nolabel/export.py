"""A run's clusters as folders: one subfolder per cluster holding its images.

    export("runs/photos", "sorted")      # sorted/cluster_00/..., sorted/cluster_01/..., sorted/clusters.csv

Each cluster's folder is `cluster_07`, or `cluster_07_<class>` when the run had labels (the class the
cluster maps to under the run's metrics). Image files are linked to (symbolic links to the originals,
the default) or copied; images of array datasets (Fashion-MNIST, CIFAR, digits, ...) are written as
PNG. `clusters.csv` lists every image: its original path (the item name for array datasets), cluster,
class, confidence, typicality, and its file in the export.

The originals are only read. The export is built in a temporary folder beside the target and moved
into place when complete; a non-empty target is refused, and with `force` only an earlier export
(marked by its `.nolabel-export` file) is replaced - never a folder of other files.
"""
from __future__ import annotations

import csv
import os
import re
import secrets
import shutil
from pathlib import Path

from PIL import Image

from .clustering import open_run_clustering
from .data import ArrayImageDataset, FileImageDataset, load
from .errors import NolabelError
from .io import slug, write_json
from .progress import progress_bar

MODES = ("link", "copy")
CLUSTERS_CSV = "clusters.csv"
MARKER = ".nolabel-export"


def export(run_dir: str | os.PathLike, to: str | os.PathLike, *, mode: str = "link", clustering: str | None = None,
           source: str = "train", force: bool = False, progress: bool = True) -> Path:
    """Write `source`'s images of `run_dir`'s chosen clustering (or the one `clustering` names, see
    `nolabel.clustering.open_run_clustering`) into `to`, one folder per cluster; return `to`.

    mode: "link" (symbolic links to the originals) or "copy" (for image files; array datasets are
    always written as PNG). force: replace an earlier export in `to`.
    """
    if mode not in MODES:
        raise NolabelError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    to = Path(to)
    _check_target(to, force)
    chosen = open_run_clustering(run_dir, clustering)
    if source not in chosen.assignments:
        raise NolabelError(f"{chosen.path}: no source {source!r}; it has {', '.join(chosen.sources)}")
    assigned = chosen.assignments[source]
    dataset = load(chosen.dataset(source))
    if not isinstance(dataset, (FileImageDataset, ArrayImageDataset)):
        raise NolabelError(f"{chosen.dataset(source)}: exporting reads image files or images in memory, "
                           f"not {type(dataset).__name__}")
    position = {name: i for i, name in enumerate(dataset.item_names)}
    missing = [item for item in assigned.items if item not in position]
    if missing:
        raise NolabelError(f"{dataset.spec} no longer holds {len(missing)} of the {len(assigned.items)} images "
                           f"clustered (e.g. {missing[0]!r}); was the folder changed or moved since the run?")
    if isinstance(dataset, FileImageDataset) and _inside(to, dataset.root):
        raise NolabelError(f"{to} lies inside the dataset folder {dataset.root}: a later run over it would read "
                           "the exported images again; export to a folder outside it")

    mapped = chosen.mapped_classes()
    width = max(2, len(str(chosen.n_clusters - 1)))
    folders = {c: f"cluster_{c:0{width}d}" + (f"_{_file_name(mapped[c])}" if c in mapped else "")
               for c in range(chosen.n_clusters)}
    to.parent.mkdir(parents=True, exist_ok=True)
    partial = _beside(to, "partial")
    try:
        for folder in folders.values():
            (partial / folder).mkdir()
        taken: dict[int, set[str]] = {c: set() for c in folders}
        rows = []
        for row in progress_bar(range(len(assigned.items)), desc="export", unit="img", enabled=progress):
            item, cluster = assigned.items[row], int(assigned.cluster[row])
            i = position[item]
            if isinstance(dataset, FileImageDataset):
                original = os.path.abspath(dataset.paths[i])
                name = _unique(os.path.basename(original), taken[cluster])
                target = partial / folders[cluster] / name
                if mode == "link":
                    os.symlink(original, target)
                else:
                    _copy(original, target)
            else:
                original = item
                name = _unique(slug(item) + ".png", taken[cluster])
                Image.fromarray(dataset.images[i]).save(partial / folders[cluster] / name, format="PNG")
            rows.append((original, cluster, mapped.get(cluster, ""), round(float(assigned.confidence[row]), 6),
                         round(float(assigned.typicality[row]), 6), f"{folders[cluster]}/{name}"))
        _write_csv(partial / CLUSTERS_CSV, rows, with_class=bool(mapped))
        write_json(partial / MARKER, {"run": str(run_dir), "clustering": str(chosen.path), "source": source,
                                      "mode": mode if isinstance(dataset, FileImageDataset) else "png",
                                      "n_images": len(rows), "n_clusters": chosen.n_clusters})
        _move_into_place(partial, to)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return to


def _check_target(to: Path, force: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder other than an earlier export (that one
    only with `force`)."""
    if to.exists() and not to.is_dir():
        raise NolabelError(f"{to} is a file; export into a new or empty folder")
    if not to.is_dir() or not any(to.iterdir()):
        return
    if not (to / MARKER).is_file():
        raise NolabelError(f"{to} is not empty and is not an earlier nolabel export; export into a new or empty "
                           "folder (--force replaces only an earlier export, never other files)")
    if not force:
        raise NolabelError(f"{to} holds an earlier export; choose another folder or pass --force to replace it")


def _move_into_place(partial: Path, to: Path) -> None:
    """Rename the finished export onto `to`; an earlier export there is moved aside first and removed
    after (its links are removed, never what they point to)."""
    if not to.exists():
        os.replace(partial, to)
        return
    if not any(to.iterdir()):
        to.rmdir()
        os.replace(partial, to)
        return
    old = _beside(to, "old")
    os.replace(to, old / to.name)
    os.replace(partial, to)
    shutil.rmtree(old)


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `stem-2.ext`, `stem-3.ext`, ... when a file of that name (compared case-insensitively,
    as some file systems do) is already in the folder: images of the same name from two folders."""
    stem, suffix = os.path.splitext(name)
    candidate, n = name, 2
    while candidate.casefold() in taken:
        candidate, n = f"{stem}-{n}{suffix}", n + 1
    taken.add(candidate.casefold())
    return candidate


def _file_name(text: str) -> str:
    """`text` usable in a file name on any system: unicode kept; separators, control characters and
    the characters Windows forbids become "_"."""
    return re.sub(r'[\x00-\x1f\x7f/\\:*?"<>|]+', "_", text).strip(" .") or "_"


def _copy(original: str, target: Path) -> None:
    """The file's bytes and modification time (not its permissions: a read-only original gives a
    writable copy)."""
    shutil.copyfile(original, target)
    st = os.stat(original)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _write_csv(path: Path, rows: list[tuple], with_class: bool) -> None:
    header = ["path", "cluster", "class", "confidence", "typicality", "file"]
    keep = [i for i, name in enumerate(header) if with_class or name != "class"]
    # surrogateescape: a file name that is not valid UTF-8 is written back as the bytes it has
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow([header[i] for i in keep])
        w.writerows([row[i] for i in keep] for row in rows)


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.abspath(path)).resolve().is_relative_to(Path(folder).resolve())


def _beside(to: Path, kind: str) -> Path:
    """A new hidden folder next to `to` (same file system, so renames are atomic)."""
    folder = to.parent / f".{to.name}.{secrets.token_hex(4)}.{kind}"
    folder.mkdir()
    return folder
