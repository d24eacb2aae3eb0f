"""Atomic file output: every file nolabel writes appears whole or not at all.

Writers go to a temporary file in the destination folder and `os.replace` it into place, so a run
killed at any moment never leaves a truncated output that a later stage would trust.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import NolabelError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NolabelError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise NolabelError(f"{path}: not valid JSON ({e})") from None


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def slug(spec: str) -> str:
    """A dataset spec as a file or folder name: runs of other characters than [A-Za-z0-9_.-] become "_"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_") or "data"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_rows(X: np.ndarray, start: int, stop: int, dtype=np.float32) -> np.ndarray:
    """A `dtype` copy of rows start:stop of X; for a memory-mapped X, the pages read are then
    released from this process's resident set.

    Streaming over a memory-mapped feature file would otherwise leave every page read resident: a
    pass over ImageNet's 1.28M x 2048 float16 features adds 5 GB to the RSS. Released pages stay
    in the OS page cache (shared, reclaimable), so reading them again costs no disk access.
    """
    rows = np.array(X[start:stop], dtype=dtype)
    release_pages(X, start, stop)
    return rows


def release_pages(X: np.ndarray, start: int = 0, stop: int | None = None) -> None:
    """madvise(DONTNEED) the mapped pages of rows start:stop of a memmap; a no-op otherwise.

    Only for a whole-file memmap (X.base is the mmap itself, as np.load(mmap_mode=...) returns)
    opened read-only or shared read-write: there dropped pages are refetched from the file or page
    cache. Copy-on-write maps ("c") are left alone - dropping a page would drop a modification.
    """
    mm = getattr(X, "base", None)
    if not isinstance(X, np.memmap) or not isinstance(mm, mmap.mmap) or X.mode == "c" or not hasattr(mm, "madvise"):
        return
    stop = X.shape[0] if stop is None else min(stop, X.shape[0])
    if stop <= start:
        return
    row_bytes = X.strides[0]
    # numpy maps from the offset rounded down to the allocation granularity
    data_start = X.offset % mmap.ALLOCATIONGRANULARITY
    first = data_start + start * row_bytes
    last = data_start + stop * row_bytes
    page = mmap.PAGESIZE
    first -= first % page
    last = min(len(mm), -(-last // page) * page)
    if last > first:
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)
