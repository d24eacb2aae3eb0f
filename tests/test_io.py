"""Atomic writes, overwrite refusal, and page release when streaming over memory-mapped features."""
from __future__ import annotations

import numpy as np
import pytest

from nolabel.io import atomic_path, read_json, read_rows, release_pages, write_json


def test_atomic_path_leaves_nothing_behind_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def _rss_file_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile")) / 1024


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_read_rows_streams_a_memmap_without_keeping_it_resident(tmp_path):
    path = tmp_path / "x.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(32768, 1024))  # 64 MiB
    data[:] = np.arange(1024, dtype=np.float16)
    data.flush()
    del data
    x = np.load(path, mmap_mode="r")
    before = _rss_file_mb()
    total = 0.0
    for start in range(0, len(x), 4096):
        chunk = read_rows(x, start, start + 4096)
        assert chunk.dtype == np.float32 and chunk.shape == (min(4096, len(x) - start), 1024)
        total += float(chunk[:, 1].sum())
    assert total == len(x)  # every row read, with the right values
    assert _rss_file_mb() - before < 16
    # the same pass without releasing keeps the whole file resident: the check above can fail
    y = np.load(path, mmap_mode="r")
    for start in range(0, len(y), 4096):
        np.array(y[start:start + 4096], dtype=np.float32)
    assert _rss_file_mb() - before > 48
    release_pages(y)
    assert _rss_file_mb() - before < 16
    release_pages(np.zeros(3))  # a plain array: nothing to do


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644  # not mkstemp's 0600
