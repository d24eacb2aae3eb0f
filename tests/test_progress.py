"""Progress display: plain lines (no carriage returns) into a file or pipe, at most every 10 s or
10 % of the work plus one at the end; a tqdm bar on a terminal; NOLABEL_PROGRESS overrides both."""
from __future__ import annotations

import io
import os
import re
import select
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from nolabel import distributed, progress
from nolabel.progress import ENV, LineProgress, SilentProgress, progress_bar
from nolabel.training import progress as training_progress

LINE = re.compile(r"^work: (\d+)/1000 \((\d+)%\) [\d.]+ img/s, (ETA \S+|done in \S+)$")


@pytest.fixture(autouse=True)
def _auto_mode(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_a_thousand_steps_into_a_pipe_give_about_ten_plain_lines(capsys):
    for _ in progress_bar(range(1000), desc="work", unit="img"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = _lines(err)
    assert 2 <= len(lines) <= 12
    for line in lines:
        assert LINE.match(line), line
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert counts == sorted(counts)
    assert lines[-1].startswith("work: 1000/1000 (100%)") and "done in" in lines[-1]
    assert any(line.startswith("work: 500/1000 (50%)") for line in lines)  # each 10 % step is reported


def test_update_interface_and_context_manager(capsys):
    with progress_bar(total=1000, desc="work", unit="img") as bar:
        for _ in range(100):
            bar.update(10)
            bar.set_postfix(loss=0.123456, lr="0.1")
    lines = _lines(capsys.readouterr().err)
    assert 2 <= len(lines) <= 12
    assert lines[-1].startswith("work: 1000/1000 (100%)") and lines[-1].endswith(", loss=0.123, lr=0.1")


def test_a_line_after_ten_seconds_even_without_a_further_ten_percent(capsys, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress, "_now", clock)
    bar = progress_bar(total=1000, desc="work", unit="img")
    bar.update(1)
    clock.t += 9.0
    bar.update(1)
    assert capsys.readouterr().err == ""  # 0 % and under 10 s: nothing yet
    clock.t += 1.0
    bar.update(1)
    assert _lines(capsys.readouterr().err) == ["work: 3/1000 (0%) 3.33 s/img, ETA 55m23s"]
    clock.t += 9.9
    bar.update(1)
    assert capsys.readouterr().err == ""  # the clock restarts at each line
    clock.t += 0.1
    bar.update(96)  # 10 s since the last line and 10 %: one line, not two
    assert _lines(capsys.readouterr().err) == ["work: 100/1000 (10%) 5.00 img/s, ETA 3m00s"]
    bar.update(50)
    assert capsys.readouterr().err == ""
    clock.t += 30.0
    bar.close()
    assert _lines(capsys.readouterr().err) == ["work: 150/1000 (15%) 3.00 img/s, done in 50s"]
    bar.close()
    bar.update(1)
    assert capsys.readouterr().err == ""  # closed: silent from then on


def test_unknown_total_and_unit_scale(capsys, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress, "_now", clock)
    bar = progress_bar(desc="stream")
    clock.t += 10.0
    bar.update(25)
    clock.t += 2.0
    bar.close()
    assert _lines(capsys.readouterr().err) == ["stream: 25 it, 2.50 it/s, 10s elapsed",
                                               "stream: 25 it, 2.08 it/s, done in 12s"]
    with progress_bar(total=500e6, desc="weights.pth", unit="B", unit_scale=True) as bar:
        clock.t += 4.0
        bar.update(50e6)
    assert _lines(capsys.readouterr().err) == ["weights.pth: 50.0MB/500MB (10%) 12.5MB/s, ETA 36s",
                                               "weights.pth: 50.0MB/500MB (10%) 12.5MB/s, done in 4s"]


def test_breaking_out_of_a_wrapped_loop_still_ends_with_a_line(capsys):
    for i in progress_bar(range(1000), desc="work", unit="img"):
        if i == 5:
            break
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("work: 5/1000 (0%)")


def test_off_disabled_and_other_ranks_print_nothing(capsys, monkeypatch):
    monkeypatch.setenv(ENV, "off")
    with progress_bar(total=1000, desc="work") as bar:
        bar.update(1000)
    assert list(progress_bar(range(3), desc="work")) == [0, 1, 2]
    monkeypatch.delenv(ENV)
    with progress_bar(total=1000, desc="work", enabled=False) as bar:
        bar.update(1000)
    assert list(training_progress(range(3), desc="work", enabled=False)) == [0, 1, 2]
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    bar = progress_bar(range(10), desc="work")
    assert isinstance(bar, SilentProgress) and not isinstance(bar, LineProgress)
    assert list(bar) == list(range(10)) and len(bar) == 10
    assert capsys.readouterr().err == ""


def test_env_forces_lines_or_bar(monkeypatch):
    monkeypatch.setenv(ENV, "bar")
    stream = io.StringIO()
    for _ in progress_bar(range(1000), desc="work", file=stream):
        pass
    assert "\r" in stream.getvalue() and "%|" in stream.getvalue()  # tqdm, even into a non-terminal
    monkeypatch.setenv(ENV, "lines")
    assert isinstance(progress_bar(total=3, file=sys.__stderr__), LineProgress)
    monkeypatch.setenv(ENV, "sideways")
    with pytest.warns(UserWarning, match=ENV):
        assert progress.mode(io.StringIO()) == "lines"


def test_training_progress_goes_through_the_factory(capsys):
    assert list(training_progress(range(1000), total=1000, desc="work")) == list(range(1000))
    lines = _lines(capsys.readouterr().err)
    assert 2 <= len(lines) <= 12 and lines[-1].startswith("work: 1000/1000 (100%)")


SCRIPT = textwrap.dedent("""
    import time
    from nolabel.progress import progress_bar
    for _ in progress_bar(range(50), desc="work", unit="img"):
        time.sleep(0.01)
""")


def _under_pty(env: dict) -> bytes:
    """stderr (and stdout) of SCRIPT when they are a pseudo-terminal."""
    import fcntl
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    try:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=slave, stderr=slave, env=env)
    finally:
        os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        proc.wait(timeout=60)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_a_terminal_gets_a_tqdm_bar():
    env = {k: v for k, v in os.environ.items() if k != ENV}
    out = _under_pty(env)
    # The terminal turns "\n" into "\r\n"; a bar redraws with a "\r" that starts no new line.
    assert re.search(rb"\r(?!\n)", out) and b"%|" in out, out
    out = _under_pty({**env, ENV: "lines"})
    assert not re.search(rb"\r(?!\n)", out) and b"work: 50/50 (100%)" in out, out


def test_cli_extract_into_a_pipe_logs_plain_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "nolabel", "extract", "--data", "digits", "--model", "pixels",
                           "--image-size", "8", "--workers", "0", "--out", str(tmp_path / "f")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    lines = _lines(proc.stderr)
    assert 1 <= len(lines) <= 15, proc.stderr
    extract_lines = [line for line in lines if line.startswith("extract: ")]
    assert extract_lines and re.match(r"extract: 1797/1797 \(100%\) [\d.]+ img/s, done in \S+$", extract_lines[-1])
