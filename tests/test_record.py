"""Stage records: fingerprints of inputs, and the one check every stage makes before it computes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nolabel import record
from nolabel.errors import NolabelError


def test_fingerprint_is_canonical_and_sees_every_value():
    a = {"pca": {"n_components": 64, "whiten": False}, "views": ("x", "y"), "k": np.int64(10)}
    b = {"k": 10, "views": ["x", "y"], "pca": {"whiten": False, "n_components": 64}}
    assert record.fingerprint(a) == record.fingerprint(b)  # key order, tuples, numpy scalars
    assert record.fingerprint(a) != record.fingerprint({**b, "k": 11})
    assert record.fingerprint(a) != record.fingerprint({**b, "pca": {"n_components": 64, "whiten": None}})
    # the reference: sha256 of the sorted, compact JSON
    import hashlib

    text = json.dumps({"k": 10, "pca": {"n_components": 64, "whiten": False}, "views": ["x", "y"]},
                      sort_keys=True, separators=(",", ":"))
    assert record.fingerprint(a) == hashlib.sha256(text.encode()).hexdigest()


def test_differences_name_the_nested_keys():
    old = {"kmeans": {"k": 10, "seed": 0}, "inputs": [{"features": "a"}, {"features": "b"}], "gone": 1}
    new = {"kmeans": {"k": 12, "seed": 0}, "inputs": [{"features": "a"}, {"features": "c"}], "added": 2}
    assert record.differences(old, new) == ["added", "gone", "inputs.1.features", "kmeans.k"]
    assert record.differences(old, old) == []


def test_array_fingerprint_reads_content_dtype_and_shape(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    assert record.array_fingerprint(x) == record.array_fingerprint(x.copy())
    assert record.array_fingerprint(x) != record.array_fingerprint(x.reshape(4, 6))
    assert record.array_fingerprint(x) != record.array_fingerprint(x.astype(np.float64))
    y = x.copy()
    y[5, 3] += 1
    assert record.array_fingerprint(x) != record.array_fingerprint(y)
    np.save(tmp_path / "x.npy", x)
    assert record.array_fingerprint(np.load(tmp_path / "x.npy", mmap_mode="r")) == record.array_fingerprint(x)
    assert record.array_fingerprint(x, None) != record.array_fingerprint(x)
    assert record.array_fingerprint(np.zeros((0, 3))) != record.array_fingerprint(np.zeros((0, 4)))


def test_begin_and_finish(tmp_path):
    folder, inputs = tmp_path / "stage", {"k": 10}
    assert record.begin(folder, "cluster", inputs) is record.START
    assert record.read(folder)["finished"] is False
    assert record.begin(folder, "cluster", inputs) is record.RESUME  # begun, not finished: resume
    with pytest.raises(NolabelError, match=r"other settings \(k differ\).*--force"):
        record.begin(folder, "cluster", {"k": 11})
    record.finish(folder, "cluster", inputs, seconds=1.5)
    assert record.begin(folder, "cluster", inputs) is record.DONE
    assert record.is_done(folder, inputs) and not record.is_done(folder, {"k": 11})
    assert record.finished_fingerprint(folder) == record.fingerprint(inputs)
    # finishing again keeps the record of the run that produced the output
    record.finish(folder, "cluster", inputs, seconds=9.0)
    assert record.read(folder)["info"] == {"seconds": 1.5}
    # other inputs, forced: the folder is claimed at once, so nothing there counts as finished
    assert record.begin(folder, "cluster", {"k": 11}, force=True) is record.START
    assert record.finished_fingerprint(folder) is None


def test_files_without_a_record_are_not_replaced_silently(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / ".partial").mkdir()  # hidden work files do not count
    assert record.begin(folder, "extract", {"a": 1}) is record.START
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text("{}")
    with pytest.raises(NolabelError, match="no record.*--force"):
        record.begin(other, "cluster", {"a": 1})
    assert record.begin(other, "cluster", {"a": 1}, force=True) is record.START
    # a second record in the same folder (e.g. neighbours beside SCAN's) is its own
    assert record.begin(folder, "neighbors", {"k": 5}, name="neighbors.record.json") is record.START
    assert record.read(folder)["stage"] == "extract"
