"""Reading what a report shows from a run folder or a standalone cluster folder.

A run folder (`nolabel run`) holds summary.json, config.yaml, cluster/ and optionally baseline/cluster/;
a cluster folder (`nolabel cluster --out DIR`) holds run.json, metrics.json and assignments.csv.
Paths recorded inside them (feature stores, cluster folders) are absolute or relative to where the
run was made; when a run folder has been moved they are looked up again relative to it.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NolabelError
from ..io import read_json
from ..store import FeatureStore

ASSIGNMENTS = "assignments.csv"
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
SUMMARY_JSON = "summary.json"


@dataclass
class SourceAssignments:
    """One source's rows of assignments.csv: (N,) arrays indexed by store row."""

    cluster: np.ndarray
    distance: np.ndarray
    label: np.ndarray

    @property
    def has_labels(self) -> bool:
        return bool((self.label >= 0).any())


@dataclass
class ClusterResult:
    """One clustering folder: its method name, settings, metrics, assignments and feature stores."""

    method: str
    path: Path
    run: dict[str, Any]
    metrics: dict[str, Any]
    assignments: dict[str, SourceAssignments]
    stores: dict[str, FeatureStore | None]
    store_problems: dict[str, str] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return list(self.assignments)

    @property
    def clustering(self) -> dict[str, Any]:
        return self.metrics.get("_clustering", {})

    @property
    def settings(self) -> dict[str, Any]:
        return self.run.get("settings", {})

    def classes(self, source: str) -> list[str]:
        """Class names of `source`, from its store; label ids as names when the store is missing."""
        store = self.stores.get(source)
        names = store.classes if store is not None else []
        labels = self.assignments[source].label
        n = int(labels.max()) + 1 if labels.size else 0
        return names if len(names) >= n else names + [str(i) for i in range(len(names), n)]


@dataclass
class RunFolder:
    """Everything the report reads: `results[0]` is the clustering browsed image by image."""

    path: Path
    name: str
    results: list[ClusterResult]
    summary: dict[str, Any] | None
    config_text: str | None
    # Summary rows of stages that keep predictions but no clustering folder (SCAN, self-labeling):
    # their metrics are in summary.json; the report names them without browsing them.
    other_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main(self) -> ClusterResult:
        return self.results[0]

    @property
    def timings(self) -> dict[str, float]:
        if self.summary and self.summary.get("timings_seconds"):
            return dict(self.summary["timings_seconds"])
        return dict(self.main.run.get("timings_seconds", {}))


def read_run(path: str | os.PathLike) -> RunFolder:
    """Open a run folder or a cluster folder; raise NolabelError when it is neither."""
    path = Path(path)
    if not path.is_dir():
        raise NolabelError(f"{path}: no such folder; pass a run folder (nolabel run) or a cluster folder "
                           "(nolabel cluster --out)")
    if (path / SUMMARY_JSON).exists():
        summary = read_json(path / SUMMARY_JSON)
        origin = summary.get("folder")
        results, other_rows = [], []
        for row in summary.get("rows", []):
            folder = _relocate(row["folder"], origin, path)
            if not (folder / RUN_JSON).exists():  # a SCAN or self-labeling row: scored in summary.json
                other_rows.append(row)
            else:
                results.append(read_cluster_folder(folder, row["method"], origin, path))
        if not results:
            raise NolabelError(f"{path / SUMMARY_JSON}: lists no clustering rows")
        config = path / "config.yaml"
        return RunFolder(path, str(summary.get("name") or path.name), results, summary,
                         config.read_text(encoding="utf-8") if config.exists() else None, other_rows)
    if (path / RUN_JSON).exists() and (path / ASSIGNMENTS).exists():
        return RunFolder(path, path.name, [read_cluster_folder(path, _method_name(read_json(path / RUN_JSON)))],
                         None, None)
    if (path / "cluster" / RUN_JSON).exists():
        return read_run(path / "cluster")
    raise NolabelError(f"{path}: neither a run folder (no {SUMMARY_JSON}) nor a cluster folder "
                       f"(no {RUN_JSON} and {ASSIGNMENTS}); wait for the run to finish or pass its folder")


def read_cluster_folder(path: Path, method: str, origin: str | None = None,
                        moved_to: Path | None = None) -> ClusterResult:
    for required in (RUN_JSON, METRICS_JSON, ASSIGNMENTS):
        if not (path / required).exists():
            raise NolabelError(f"{path}: no {required}; the clustering stage has not finished")
    run = read_json(path / RUN_JSON)
    stores, problems = {}, {}
    for source, store_path in run.get("sources", {}).items():
        try:
            stores[source] = FeatureStore.open(_relocate(store_path, origin, moved_to))
        except NolabelError as e:
            stores[source], problems[source] = None, str(e)
    return ClusterResult(method, path, run, read_json(path / METRICS_JSON), read_assignments(path / ASSIGNMENTS),
                         stores, problems)


def read_assignments(path: Path) -> dict[str, SourceAssignments]:
    """assignments.csv (row, source, cluster, distance, label) split by source, rows in store order."""
    columns: dict[str, tuple[list, list, list, list]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows, clusters, distances, labels = columns.setdefault(row["source"], ([], [], [], []))
            rows.append(int(row["row"]))
            clusters.append(int(row["cluster"]))
            distances.append(float(row["distance"]))
            labels.append(int(row["label"]))
    result = {}
    for source, (rows, clusters, distances, labels) in columns.items():
        order = np.argsort(np.asarray(rows), kind="stable")
        result[source] = SourceAssignments(np.asarray(clusters, np.int64)[order],
                                           np.asarray(distances, np.float64)[order],
                                           np.asarray(labels, np.int64)[order])
    return result


def _relocate(recorded: str, origin: str | None, moved_to: Path | None) -> Path:
    """`recorded` as it is, or re-rooted from the folder the run was made in to where it is now."""
    path = Path(recorded)
    if path.exists() or origin is None or moved_to is None:
        return path
    try:
        return moved_to / path.relative_to(origin)
    except ValueError:
        return path


def _method_name(run: dict[str, Any]) -> str:
    settings = run.get("settings", {})
    inputs = settings.get("inputs") or [{}]
    pca = " + PCA" if settings.get("pca", {}).get("enabled", True) else ""
    return f"{inputs[0].get('model') or 'features'}{pca} + k-means"
