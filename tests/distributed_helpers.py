"""Launch a script under `torchrun` on CPU (gloo), as the distributed tests do."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

TORCHRUN = Path(sys.executable).with_name("torchrun")
# One thread per process: tests compare results bit for bit with a one-process run, and a
# different thread count may change the order of float reductions.
SINGLE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script: Path, *args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `script` in `nproc` gloo processes; returns the completed process (check returncode)."""
    return subprocess.run([str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                           "--master_port", str(free_port()), str(script), *map(str, args)],
                          env=SINGLE_THREAD_ENV, capture_output=True, text=True, timeout=timeout)
