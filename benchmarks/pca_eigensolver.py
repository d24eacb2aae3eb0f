"""PCA's eigensolver: the k leading eigenpairs by Lanczos (ARPACK) against a full eigendecomposition.

`nolabel.cluster.PCA` accumulates the exact (d, d) covariance, then needs only its k leading
eigenpairs. For the widths nolabel meets (1280: EfficientNet-Lite0; 3880: its multi-level features)
and k = 64 (the runs' PCA and the label-free scores' space), this times numpy's full `eigh` against
`_leading_eigenpairs` (scipy's `eigsh`, fixed start vector), and reports the largest eigenvalue
difference (relative to the largest eigenvalue) and 1 - |cos| of the worst-matching component.
Covariances: N = 20,000 rows with a decaying spectrum plus one shared direction.

    .venv/bin/python benchmarks/pca_eigensolver.py   # -> results/pca_eigensolver.json
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from nolabel.cluster.pca import _leading_eigenpairs
from nolabel.io import write_json

K = 64


def covariance(d: int, n: int = 20_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(3, 0.01, d) + rng.standard_normal((n, 1)) * rng.standard_normal(d)
    return np.cov(x.T)


def main() -> None:
    rows = []
    for d in (1280, 3880):
        c = covariance(d)
        started = time.perf_counter()
        full_values, full_vectors = np.linalg.eigh(c)
        full_s = time.perf_counter() - started
        started = time.perf_counter()
        values, vectors = _leading_eigenpairs(c, K)
        leading_s = time.perf_counter() - started
        reference_values = full_values[::-1][:K]
        reference_vectors = full_vectors[:, ::-1][:, :K].T
        rows.append({
            "d": d, "k": K, "full_eigh_s": full_s, "leading_s": leading_s, "speedup": full_s / leading_s,
            "max_eigenvalue_error": float(np.abs(values - reference_values).max() / reference_values[0]),
            "max_component_error": float(1 - np.abs((vectors * reference_vectors).sum(1)).min()),
        })
    print(f"{'d':>6} {'k':>4} {'full eigh s':>12} {'leading s':>10} {'speedup':>8} {'eigenvalue err':>15} "
          f"{'component err':>14}")
    for r in rows:
        print(f"{r['d']:>6} {r['k']:>4} {r['full_eigh_s']:>12.2f} {r['leading_s']:>10.2f} {r['speedup']:>8.1f} "
              f"{r['max_eigenvalue_error']:>15.1e} {r['max_component_error']:>14.1e}")
    write_json("results/pca_eigensolver.json", {
        "benchmark": "pca eigensolver", "rows": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
    })


if __name__ == "__main__":
    main()
