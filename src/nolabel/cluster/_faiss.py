"""Import faiss with its OpenMP thread count set explicitly.

faiss's default OpenMP settings oversubscribe small machines (on the 2-vCPU development box they
ran 5-28x slower than one thread), so every faiss user in nolabel goes through `import_faiss`.
"""
from __future__ import annotations

from types import ModuleType

from ..errors import NolabelError

# Measured on the 2-vCPU development box (IndexFlatL2 search, 200k x 128 queries, 1000 centroids):
# 1 thread 0.77-0.79 s, 2 threads 0.70-0.78 s. Two threads buy nothing measurable on a machine
# with about one core of compute, and one thread never oversubscribes; callers with real cores
# pass `threads` explicitly.
DEFAULT_THREADS = 1


def import_faiss(threads: int | None = None) -> ModuleType:
    """Return the faiss module with `faiss.omp_set_num_threads(threads)` applied."""
    if threads is None:
        threads = DEFAULT_THREADS
    if not isinstance(threads, int) or threads < 1:
        raise NolabelError(f"faiss threads must be a positive integer, got {threads!r}")
    try:
        import faiss
    except ImportError:
        raise NolabelError("faiss is not installed: pip install faiss-cpu (or faiss-gpu)") from None
    faiss.omp_set_num_threads(threads)
    return faiss


def gpu_count(faiss: ModuleType) -> int:
    """Number of GPUs faiss can use (0 for the faiss-cpu build)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
