"""The on-disk feature store: one folder per feature set.

    DIR/features.npy   (N, D) float16 or float32, memory-mapped when read
    DIR/labels.npy     (N,) int64, -1 where the label is unknown
    DIR/index.csv      row,item - which image each row came from (path, or split/index)
    DIR/skipped.csv    item,reason - images that could not be read (empty but for the header if none)
    DIR/manifest.json  how the features were made, with "complete": true
    DIR/record.json    what produced them and its fingerprint (`nolabel.record`); written last

A folder is a finished store only when its manifest says complete; readers refuse anything else,
so a killed extraction can never be mistaken for a result.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import record
from .errors import NolabelError
from .io import atomic_path, read_json, save_npy, write_json

FEATURES = "features.npy"
LABELS = "labels.npy"
INDEX = "index.csv"
SKIPPED = "skipped.csv"
MANIFEST = "manifest.json"
# manifest entries that say how an extraction ran, not what it computed
_RUN_FACTS = ("seconds", "images_per_second", "world_size", "nolabel_version", "torch_version", "weights")


@dataclass
class FeatureStore:
    """A complete feature folder. `features` is memory-mapped read-only: (N, D)."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStore":
        path = Path(path)
        if not path.is_dir():
            raise NolabelError(f"{path}: no such feature folder")
        if not (path / MANIFEST).exists():
            if any(path.glob(".partial*")):
                raise NolabelError(
                    f"{path}: extraction did not finish; run `nolabel extract` again with the "
                    "same arguments to resume it"
                )
            raise NolabelError(f"{path}: not a feature folder (no {MANIFEST})")
        manifest = read_json(path / MANIFEST)
        if not manifest.get("complete"):
            raise NolabelError(f"{path}: extraction is not complete")
        return cls(path=path, manifest=manifest)

    @cached_property
    def features(self) -> np.ndarray:
        return np.load(self.path / FEATURES, mmap_mode="r")

    @cached_property
    def labels(self) -> np.ndarray:
        return np.load(self.path / LABELS)

    @cached_property
    def items(self) -> list[str]:
        with open(self.path / INDEX, newline="", encoding="utf-8") as f:
            return [row["item"] for row in csv.DictReader(f)]

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def has_labels(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes", []))

    @cached_property
    def fingerprint(self) -> str:
        """The fingerprint of what produced these features (`nolabel.record`): a stage that reads this
        store lists it among its inputs. A store written before records existed is fingerprinted by
        its manifest, less the entries that describe the run rather than the features."""
        found = record.finished_fingerprint(self.path)
        if found is not None:
            return found
        return record.fingerprint({k: v for k, v in self.manifest.items() if k not in _RUN_FACTS})


def is_complete(path: str | os.PathLike) -> bool:
    manifest = Path(path) / MANIFEST
    return manifest.exists() and bool(read_json(manifest).get("complete"))


def write_index(path: Path, items: Sequence[str]) -> None:
    with atomic_path(path / INDEX) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["row", "item"])
            w.writerows(enumerate(items))


def write_skipped(path: Path, skipped: Sequence[tuple[str, str]]) -> None:
    with atomic_path(path / SKIPPED) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["item", "reason"])
            w.writerows(skipped)


def write_store(
    path: str | os.PathLike,
    features: np.ndarray,
    labels: np.ndarray,
    items: Sequence[str],
    manifest: dict[str, Any],
    skipped: Sequence[tuple[str, str]] = (),
    inputs: dict[str, Any] | None = None,
) -> FeatureStore:
    """Write an in-memory feature set as a complete store (manifest, then the record, last).

    `inputs`: what produced the features, for the store's record (default: `manifest` and the
    sha256 of the features and labels, so that other arrays never share a fingerprint)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    features = np.asarray(features)
    if features.ndim != 2 or len(labels) != len(features) or len(items) != len(features):
        raise ValueError("features must be (N, D) with N labels and N items")
    save_npy(path / FEATURES, features)
    save_npy(path / LABELS, np.asarray(labels, dtype=np.int64))
    write_index(path, items)
    write_skipped(path, skipped)
    manifest = {
        **manifest,
        "n": int(features.shape[0]),
        "dim": int(features.shape[1]),
        "dtype": str(features.dtype),
        "complete": True,
    }
    write_json(path / MANIFEST, manifest)
    if inputs is None:
        content = hashlib.sha256(np.ascontiguousarray(features).data)
        content.update(np.asarray(labels, dtype="<i8").tobytes())
        inputs = {**manifest, "content_sha256": content.hexdigest()}
    record.finish(path, "extract", inputs)
    return FeatureStore(path=path, manifest=manifest)


def source_names(stores: Sequence[FeatureStore]) -> list[str]:
    """The `source` name of each store: "train" for the first, then each store's folder name (made unique)."""
    return unique_names(["train", *(s.path.name or "eval" for s in stores[1:])])


def unique_names(names: Sequence[str]) -> list[str]:
    """`names` with repeats made unique by a suffix: a, a-2, a-3, ..."""
    seen, unique = set(), []
    for name in names:
        candidate, i = name, 2
        while candidate in seen:
            candidate, i = f"{name}-{i}", i + 1
        seen.add(candidate)
        unique.append(candidate)
    return unique
