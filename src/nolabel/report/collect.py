"""What a report shows, read from a run folder or from one clustering folder.

A run folder (`nolabel run`) holds summary.json (its results rows, one per clustering, and which
clustering is the run's primary one), config.yaml and the clustering folders; a clustering folder
(`nolabel cluster --out DIR`, `nolabel scan --out DIR`, ...) is read by `nolabel.clustering`.
Paths recorded in summary.json are absolute or relative to where the run was made; they are found
as every command finds them (`nolabel.clustering.recorded_folder`): re-rooted in the folder given, so
a moved or copied run folder shows its own clusterings, never the original's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..clustering import (CLUSTERING_JSON, SUMMARY_JSON, Clustering, SourceAssignments, load_clustering,
                          recorded_folder)
from ..errors import NolabelError
from ..io import read_json

__all__ = ["ClusterResult", "RunFolder", "SourceAssignments", "read_run"]


@dataclass
class ClusterResult:
    """One clustering as the report shows it: its name in the run's results table and the clustering."""

    method: str
    clustering: Clustering

    @property
    def path(self) -> Path:
        return self.clustering.path

    @property
    def info(self) -> dict[str, Any]:
        return self.clustering.info

    @property
    def metrics(self) -> dict[str, Any]:
        return self.clustering.metrics

    @property
    def assignments(self) -> dict[str, SourceAssignments]:
        return self.clustering.assignments

    @property
    def sources(self) -> list[str]:
        return self.clustering.sources

    @property
    def fitted(self) -> dict[str, Any]:
        """Facts of the fit (k-means' inertia, SCAN's kept head, ...)."""
        return self.metrics.get("_clustering", {})

    @property
    def settings(self) -> dict[str, Any]:
        return self.info.get("settings", {})

    @property
    def mapping(self) -> str:
        return self.info.get("evaluate", {}).get("mapping", "hungarian")

    def classes(self, source: str) -> list[str]:
        """Class names of `source`; label ids as names for labels beyond them."""
        names = self.clustering.classes(source)
        labels = self.assignments[source].label
        n = int(labels.max()) + 1 if labels.size else 0
        return names if len(names) >= n else names + [str(i) for i in range(len(names), n)]


@dataclass
class RunFolder:
    """Everything the report reads: every clustering of the run, and which one is the primary."""

    path: Path
    name: str
    results: list[ClusterResult]
    summary: dict[str, Any] | None
    config_text: str | None
    primary: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def main(self) -> ClusterResult:
        return self.results[self.primary]

    @property
    def timings(self) -> dict[str, float]:
        if self.summary and self.summary.get("timings_seconds"):
            return dict(self.summary["timings_seconds"])
        return dict(self.main.info.get("timings_seconds", {}))


def read_run(path: str | os.PathLike) -> RunFolder:
    """Open a run folder or a clustering folder; raise NolabelError when it is neither."""
    path = Path(path)
    if not path.is_dir():
        raise NolabelError(f"{path}: no such folder; pass a run folder (nolabel run) or a clustering folder "
                           "(nolabel cluster --out, nolabel scan --out, ...)")
    if (path / SUMMARY_JSON).exists():
        summary = read_json(path / SUMMARY_JSON)
        results = [ClusterResult(row["method"], load_clustering(recorded_folder(path, summary, row["folder"])))
                   for row in summary.get("rows", [])]
        if not results:
            raise NolabelError(f"{path / SUMMARY_JSON}: lists no clustering")
        primary_folder = summary.get("primary")
        primary = next((i for i, row in enumerate(summary["rows"]) if row["folder"] == primary_folder), 0)
        config = path / "config.yaml"
        return RunFolder(path, str(summary.get("name") or path.name), results, summary,
                         config.read_text(encoding="utf-8") if config.exists() else None, primary)
    if (path / CLUSTERING_JSON).exists():
        clustering = load_clustering(path)
        return RunFolder(path, path.name, [ClusterResult(clustering.method, clustering)], None, None)
    if (path / "cluster" / CLUSTERING_JSON).exists():
        return read_run(path / "cluster")
    raise NolabelError(f"{path}: neither a run folder (no {SUMMARY_JSON}) nor a clustering folder "
                       f"(no {CLUSTERING_JSON}); wait for the run to finish or pass its folder")

