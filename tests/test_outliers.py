"""Typicality in assignments.csv, and the most / least typical and most uncertain images of a clustering."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from nolabel.clustering import (ASSIGNMENTS, COLUMNS, Source, load_clustering, outliers, read_assignments, typicality,
                                write_clustering)
from nolabel.errors import NolabelError
from nolabel.record import finish


def test_typicality_ranks_within_each_cluster():
    cluster = np.array([0, 0, 0, 1, 2, 2])
    distance = np.array([3.0, 1.0, 2.0, 9.0, 5.0, 5.0])
    # cluster 0: nearest 1.0 -> 1, then 2.0 -> 0.5, farthest 3.0 -> 0; a cluster of one: 1; a tie: the lower row first
    np.testing.assert_allclose(typicality(cluster, distance, np.zeros(6)), [0, 1, 0.5, 1, 1, 0])
    # without centroids (distances NaN) the most confident is the most typical
    confidence = np.array([0.2, 0.9, 0.5, 0.1, 0.3, 0.7])
    np.testing.assert_allclose(typicality(cluster, np.full(6, np.nan), confidence), [0, 1, 0.5, 1, 0, 1])


@pytest.fixture
def clustering(tmp_path):
    """A clustering of 9 images in 3 clusters, written as the stages write it."""
    cluster = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    distance = np.array([0.5, 0.1, 0.9, 0.2, 0.8, 0.4, 0.3, 0.6, 0.7])
    confidence = np.array([0.6, 0.9, 0.05, 0.8, 0.1, 0.7, 0.95, 0.5, 0.3])
    source = Source("train", "images:/x", [f"img {i}.png" for i in range(9)], np.full(9, -1), [])
    write_clustering(tmp_path, method="test", sources=[source], clusters=[cluster], confidence=[confidence],
                     n_clusters=3, assigner={"kind": "centroids"}, distance=[distance])
    finish(tmp_path, "test", {})
    return tmp_path


def test_assignments_csv_holds_typicality_and_old_files_still_read(clustering):
    with open(clustering / ASSIGNMENTS, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and "typicality" in COLUMNS
    written = np.array([float(r["typicality"]) for r in rows])
    np.testing.assert_allclose(written, [0.5, 1, 0, 1, 0, 0.5, 1, 0.5, 0])
    # an assignments.csv from before the column: read the same, typicality computed
    old = clustering / "old.csv"
    with open(old, "w", newline="") as f:
        w = csv.DictWriter(f, [c for c in COLUMNS if c != "typicality"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    np.testing.assert_allclose(read_assignments(old)["train"].typicality, written)
    assert read_assignments(clustering / ASSIGNMENTS)["train"].items == [f"img {i}.png" for i in range(9)]


def test_outliers_per_cluster_and_most_uncertain(clustering):
    found = outliers(load_clustering(clustering), n_per_cluster=2, n_uncertain=3)
    assert {c: rows.tolist() for c, rows in found.most_typical.items()} == {0: [1, 0], 1: [3, 5], 2: [6, 7]}
    assert {c: rows.tolist() for c, rows in found.least_typical.items()} == {0: [2, 0], 1: [4, 5], 2: [8, 7]}
    assert found.uncertain.tolist() == [2, 4, 8]  # lowest confidence in the whole source
    assert found.items[found.uncertain[0]] == "img 2.png"
    # a folder works as well as a loaded clustering; asking for nothing gives nothing
    assert outliers(clustering, n_per_cluster=0, n_uncertain=0).uncertain.size == 0
    with pytest.raises(NolabelError, match="no source 'test'"):
        outliers(clustering, source="test")
    with pytest.raises(NolabelError, match=">= 0"):
        outliers(clustering, n_per_cluster=-1)
