"""What produced an output: one record per artifact, one rule for every stage.

Every stage writes its output into a folder (a feature store, a clustering, a trained backbone,
SCAN's heads, a sweep, ...) and that folder's `record.json` names everything that changes the
output: the stage's own settings and the fingerprints of the artifacts it read. The record's
fingerprint is the sha256 of those inputs as canonical JSON, so a stage that lists its upstream
fingerprints among its inputs changes fingerprint whenever anything upstream changes, and a change
anywhere reruns everything below it.

The record is written twice: when the stage begins (`"finished": false`: the folder now belongs to
these inputs, and partial work in it - a training state, a half-written feature file - may be
resumed) and when it ends (`"finished": true`). `begin` is the one check every stage makes:

    status = record.begin(folder, "cluster", inputs, force=force, what="a clustering")
    if status is record.DONE:        # finished with these very inputs: nothing to do
        return load(folder)
    ...                              # RESUME: continue partial work; START: from scratch
    record.finish(folder, "cluster", inputs, seconds=...)

A folder that holds an output made from other inputs is never replaced without `force`; the error
names the inputs that differ. Facts that do not change the output (timings, versions, the device,
the number of processes) go in the record's `info`, outside the fingerprint.
"""
from __future__ import annotations

import enum
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import NolabelError
from .io import read_json, write_json

RECORD = "record.json"


class Status(enum.Enum):
    DONE = "done"  # finished with the same inputs
    RESUME = "resume"  # begun with the same inputs, not finished: continue the partial work
    START = "start"  # nothing usable there: compute from scratch (partial work of other inputs is void)


DONE, RESUME, START = Status.DONE, Status.RESUME, Status.START


def canonical(inputs: Any) -> Any:
    """`inputs` as plain JSON values (tuples become lists, paths strings), as a record stores them."""
    return json.loads(json.dumps(inputs, sort_keys=True, default=_plain))


def fingerprint(inputs: Any) -> str:
    """sha256 (hex) of `inputs` as canonical JSON: keys sorted, no whitespace."""
    text = json.dumps(canonical(inputs), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read(folder: str | os.PathLike, name: str = RECORD) -> dict[str, Any] | None:
    """The record in `folder` (None when there is none)."""
    path = Path(folder) / name
    return read_json(path) if path.is_file() else None


def finished_fingerprint(folder: str | os.PathLike, name: str = RECORD) -> str | None:
    """The fingerprint of the finished output in `folder`; None when it has no finished record."""
    rec = read(folder, name)
    return rec["fingerprint"] if rec and rec.get("finished") else None


def is_done(folder: str | os.PathLike, inputs: Any, name: str = RECORD) -> bool:
    return finished_fingerprint(folder, name) == fingerprint(inputs)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two input mappings, e.g. ["kmeans.k"]."""
    old, new = canonical(old), canonical(new)
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".") or "(inputs)"]


def begin(folder: str | os.PathLike, stage: str, inputs: Any, *, force: bool = False, what: str = "an output",
          name: str = RECORD) -> Status:
    """Claim `folder` for a stage with these `inputs` and say what is left to do (see the module doc).

    Raises when the folder holds a record of other inputs, or files without any record, unless
    `force`: then the old record is replaced at once, so nothing there counts as finished any more.
    Writes nothing (and returns DONE) when the output is already finished with these inputs.
    """
    folder = Path(folder)
    previous = read(folder, name)
    wanted = fingerprint(inputs)
    if previous is not None and previous.get("fingerprint") == wanted:
        return DONE if previous.get("finished") else RESUME
    if not force:
        if previous is not None:
            changed = ", ".join(differences(previous.get("inputs", {}), inputs)) or "the record's format"
            raise NolabelError(f"{folder}: holds {what} made with other settings ({changed} differ); "
                               "choose another output folder, or pass --force to replace it")
        if name == RECORD and folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir()):
            raise NolabelError(f"{folder}: holds files that no record of this version of nolabel describes; "
                               "choose another output folder, or pass --force to replace them")
    from . import distributed

    distributed.barrier()  # under torchrun every process has read the old record before it is replaced
    _write(folder, stage, inputs, wanted, finished=False, info={}, name=name)
    return START


def finish(folder: str | os.PathLike, stage: str, inputs: Any, name: str = RECORD, **info: Any) -> dict[str, Any]:
    """Mark the output in `folder` finished with these inputs (written last, atomically). A record
    already finished with them is left as it is, with the facts of the run that produced it."""
    previous = read(folder, name)
    fp = fingerprint(inputs)
    if previous is not None and previous.get("finished") and previous.get("fingerprint") == fp:
        return previous
    return _write(Path(folder), stage, inputs, fp, finished=True, info=info, name=name)


def _write(folder: Path, stage: str, inputs: Any, fp: str, *, finished: bool, info: dict, name: str) -> dict:
    from . import distributed

    rec = {"stage": stage, "fingerprint": fp, "finished": finished, "inputs": canonical(inputs),
           "info": canonical(info)}
    if distributed.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / name, rec)
    return rec


def array_fingerprint(*arrays: Any) -> str:
    """sha256 of numpy arrays (dtype, shape and bytes; None counts as absent), read in blocks so a
    memory-mapped array is never copied whole."""
    import numpy as np

    h = hashlib.sha256()
    for array in arrays:
        if array is None:
            h.update(b"none;")
            continue
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        h.update(f"{array.dtype.str}{array.shape};".encode())
        if array.size == 0:
            continue
        flat = array.reshape(len(array), -1) if array.ndim else array.reshape(1, 1)
        step = max(1, (64 << 20) // max(1, flat.strides[0] if flat.ndim else 1))
        for start in range(0, len(flat), step):
            h.update(np.ascontiguousarray(flat[start:start + step]).data)
    return h.hexdigest()


def without(settings: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`settings` minus `keys`: for a config section whose listed fields (e.g. `device`) say where
    the work runs, not what it computes."""
    return {k: v for k, v in settings.items() if k not in keys}


def _plain(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"not a JSON value for a record: {type(obj).__name__}")
