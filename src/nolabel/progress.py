"""Progress display: a tqdm bar on a terminal, plain lines in a log.

Every progress display in nolabel is made by `progress_bar`. What it shows depends on where
stderr goes:

- a terminal (``stderr.isatty()``): a tqdm bar, redrawn in place;
- a file or a pipe (``make run > log 2>&1``, a batch job, CI), where a tqdm bar would land as one
  enormous line of carriage returns: a plain line whenever ~10 s have passed or another 10 % of
  the work is done since the last line (whichever comes first), and one when the bar closes::

      extract: 12800/70000 (18%) 312 img/s, ETA 3m03s
      extract: 70000/70000 (100%) 315 img/s, done in 3m42s

  A bar without a known total prints count, rate and elapsed time instead. Lines only come with
  updates: a stalled loop prints nothing until it moves again.

The environment variable ``NOLABEL_PROGRESS`` overrides the choice:

- ``bar``: a tqdm bar even into a file or pipe;
- ``lines``: plain lines even on a terminal;
- ``off``: no progress display at all;
- ``auto`` (or unset): by ``isatty()`` as above. Other values warn and count as ``auto``.

Under torchrun only the main process (rank 0) displays anything; the other ranks get a silent
object with the same interface.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from . import distributed

ENV = "NOLABEL_PROGRESS"
MODES = ("auto", "bar", "lines", "off")
INTERVAL_S = 10.0  # plain lines: at most this long between two lines while work goes on
STEPS = 10  # plain lines: and one at each further 1/STEPS of the total

_now = time.monotonic  # the clock of the plain lines (tests replace it)


def mode(stream: TextIO | None = None) -> str:
    """'bar', 'lines' or 'off': NOLABEL_PROGRESS when set, else 'bar' iff `stream` (stderr) is a terminal."""
    wanted = os.environ.get(ENV, "").strip().lower() or "auto"
    if wanted not in MODES:
        warnings.warn(f"{ENV}={os.environ[ENV]!r} is not one of {', '.join(MODES)}; using auto", stacklevel=3)
        wanted = "auto"
    if wanted != "auto":
        return wanted
    return "bar" if _isatty(sys.stderr if stream is None else stream) else "lines"


def progress_bar(iterable: Iterable | None = None, total: int | float | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, *, unit_scale: bool = False, leave: bool = True,
                 file: TextIO | None = None, interval: float = INTERVAL_S, **bar_options: Any):
    """A progress display with tqdm's interface: `update(n)`, `set_postfix(...)`, `set_description`,
    `close()`, use as a context manager, and iteration when it wraps `iterable`.

    A tqdm bar on a terminal, plain lines elsewhere, nothing when `enabled` is false, on ranks
    other than the main one, or with NOLABEL_PROGRESS=off (see the module docstring). `total`
    defaults to len(iterable). `unit_scale` shows counts as 12.3k / 4.5M (with unit "B": bytes).
    `leave` and `bar_options` (e.g. smoothing) go to tqdm only. `file` defaults to sys.stderr.
    """
    file = sys.stderr if file is None else file
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            pass
    how = mode(file) if enabled and distributed.is_main() else "off"
    if how == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, leave=leave, file=file,
                    dynamic_ncols=True, **bar_options)
    if how == "lines":
        return LineProgress(iterable, total, desc, unit, unit_scale, file, interval)
    return SilentProgress(iterable, total, desc)


class SilentProgress:
    """tqdm's interface, displaying nothing (disabled, off, or not the main process)."""

    def __init__(self, iterable: Iterable | None = None, total: int | float | None = None, desc: str = ""):
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.n = 0
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress display wraps no iterable")
        return iter(self.iterable)

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class LineProgress(SilentProgress):
    """Plain progress lines for logs: at most every `interval` seconds or each 1/STEPS of the
    total, whichever comes first, and a last line on close (see the module docstring)."""

    def __init__(self, iterable: Iterable | None, total: int | float | None, desc: str, unit: str,
                 unit_scale: bool, file: TextIO, interval: float = INTERVAL_S):
        super().__init__(iterable, total, desc)
        self.unit = unit
        self.unit_scale = unit_scale
        self.file = file
        self.interval = interval
        self.postfix = ""
        self.start = self.last_time = _now()
        self.last_step = 0  # 1/STEPS steps of the total already reported

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress display wraps no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int | float = 1) -> None:
        if self.closed:
            return
        self.n += n
        now = _now()
        step = self._step()
        # The line at 100 % is close()'s, with the total time.
        if (now - self.last_time >= self.interval or step > self.last_step) and step < STEPS:
            self._write(self._line(now))
            self.last_time, self.last_step = now, step

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_postfix_value(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._write(self._line(_now(), final=True))

    def _step(self) -> int:
        if not self.total or self.total <= 0:
            return 0
        return int(self.n * STEPS // self.total)

    def _line(self, now: float, final: bool = False) -> str:
        elapsed = max(0.0, now - self.start)
        rate = self.n / elapsed if elapsed > 0 and self.n > 0 else None
        if self.total:
            percent = int(100 * self.n // self.total)
            text = f"{self._count(self.n)}/{self._count(self.total)} ({percent}%) {self._rate(rate)}"
            if final:
                text += f", done in {_duration(elapsed)}"
            else:
                remaining = max(0.0, self.total - self.n)
                text += f", ETA {_duration(remaining / rate) if rate else '?'}"
        else:
            text = f"{self._count(self.n)}{'' if self.unit_scale else ' ' + self.unit}, {self._rate(rate)}"
            text += f", done in {_duration(elapsed)}" if final else f", {_duration(elapsed)} elapsed"
        if self.postfix:
            text += f", {self.postfix}"
        return f"{self.desc}: {text}" if self.desc else text

    def _count(self, x: float) -> str:
        if self.unit_scale:
            return _si(x) + self.unit
        return str(int(x)) if float(x).is_integer() else f"{x:.2f}"

    def _rate(self, rate: float | None) -> str:
        if rate is None:
            return f"? {self.unit}/s"
        if self.unit_scale:
            return f"{_si(rate)}{self.unit}/s"
        if rate < 1:
            return f"{_fixed(1 / rate)} s/{self.unit}"
        return f"{_fixed(rate)} {self.unit}/s"

    def _write(self, line: str) -> None:
        try:
            self.file.write(line + "\n")
            self.file.flush()
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            pass


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def _fixed(x: float) -> str:
    """3 significant digits or the integer part: 3.14, 31.4, 314, 31416."""
    return f"{x:.2f}" if x < 9.995 else f"{x:.1f}" if x < 99.95 else f"{x:.0f}"


def _si(x: float) -> str:
    """12.3k, 4.56M, ... (powers of 1000) as tqdm's unit_scale shows them."""
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(x) < 999.5:
            return (str(int(x)) if not prefix and float(x).is_integer() else _fixed(x)) + prefix
        x /= 1000
    return _fixed(x) + "E"


def _duration(seconds: float) -> str:
    """42s, 3m03s, 2h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _postfix_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).strip()
