"""nolabel KMeans vs raw faiss vs scikit-learn: same data, same initial centroids, same iterations.

Data: a Gaussian mixture the size of ImageNet's train set after PCA-128 (1,281,167 x 128 float32),
k = 1000, 20 Lloyd iterations. faiss runs with max_points_per_centroid raised so it uses every
point; scikit-learn runs algorithm="lloyd", tol=0. All three use the same thread count. The
objective is recomputed the same way for all three: the exact (float64) sum of squared distances
of every point to its nearest final centroid.

    .venv/bin/python benchmarks/kmeans.py            # full run, several minutes -> results/kmeans.json
    .venv/bin/python benchmarks/kmeans.py --quick    # smoke run -> results/kmeans_quick.json
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

from nolabel.cluster import KMeans
from nolabel.cluster._faiss import DEFAULT_THREADS, import_faiss
from nolabel.io import write_json


def gaussian_mixture(n: int, d: int, components: int, seed: int) -> np.ndarray:
    """Isotropic unit-variance blobs around centres drawn with spread 1.5 (they overlap somewhat)."""
    rng = np.random.default_rng(seed)
    centers = (rng.standard_normal((components, d)) * 1.5).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1 << 17):
        stop = min(start + (1 << 17), n)
        X[start:stop] = centers[rng.integers(0, components, stop - start)]
        X[start:stop] += rng.standard_normal((stop - start, d), dtype=np.float32)
    return X


def kmeans_plusplus_init(X: np.ndarray, k: int, seed: int, sample: int = 50_000) -> np.ndarray:
    """k-means++ seeds drawn from a fixed random sample of X.

    A spread-out start keeps every cluster non-empty, so the three implementations run the same
    exact Lloyd iterations and their final objectives must agree; from k random points some
    clusters empty out and each library re-seeds them its own way, after which the runs diverge
    and their objectives can no longer be compared.
    """
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(X), min(sample, len(X)), replace=False))
    centers, _ = kmeans_plusplus(X[rows], k, random_state=seed)
    return np.ascontiguousarray(centers, dtype=np.float32)


def objective(faiss, X: np.ndarray, centroids: np.ndarray) -> float:
    """Exact sum of squared distances of every row to its nearest centroid (search by faiss, sum in float64)."""
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    total = 0.0
    for start in range(0, len(X), 1 << 16):
        x = X[start:start + (1 << 16)]
        nearest = index.search(x, 1)[1][:, 0]
        diff = x.astype(np.float64) - centroids[nearest].astype(np.float64)
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def run_nolabel(X, init, iterations, threads):
    model = KMeans(len(init), init=init, n_init=1, max_iter=iterations, device="cpu", threads=threads).fit(X)
    return model.cluster_centers_, model.n_iter_


def run_faiss(X, init, iterations, threads):
    faiss = import_faiss(threads)
    k, d = init.shape
    kmeans = faiss.Kmeans(d, k, niter=iterations, max_points_per_centroid=-(-len(X) // k) + 1,
                          seed=0, verbose=False)
    kmeans.train(X, init_centroids=init)
    return kmeans.centroids, iterations


def run_sklearn(X, init, iterations, threads):
    from sklearn.cluster import KMeans as SklearnKMeans

    model = SklearnKMeans(len(init), init=init, n_init=1, max_iter=iterations, tol=0.0,
                          algorithm="lloyd").fit(X)
    return model.cluster_centers_.astype(np.float32), int(model.n_iter_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (50k x 64, k=100)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    parser.add_argument("--skip-sklearn", action="store_true")
    args = parser.parse_args()
    n, d, k, iterations = (50_000, 64, 100, 10) if args.quick else (1_281_167, 128, 1000, 20)

    faiss = import_faiss(args.threads)
    t = time.perf_counter()
    X = gaussian_mixture(n, d, components=k, seed=0)
    init = kmeans_plusplus_init(X, k, seed=1)
    print(f"data {n} x {d}, k={k}, {iterations} iterations, {args.threads} thread(s) "
          f"(generated in {time.perf_counter() - t:.1f} s)", flush=True)

    runners = {"nolabel": run_nolabel, "faiss": run_faiss, "sklearn": run_sklearn}
    if args.skip_sklearn:
        del runners["sklearn"]
    rows = []
    for name, runner in runners.items():
        with threadpool_limits(limits=args.threads):
            start = time.perf_counter()
            centroids, n_iter = runner(X, init, iterations, args.threads)
            seconds = time.perf_counter() - start
        rows.append({"method": name, "seconds": seconds, "n_iter": n_iter,
                     "objective": objective(faiss, X, centroids)})
        print(f"  {name}: {seconds:.1f} s", flush=True)

    by_name = {row["method"]: row for row in rows}
    for row in rows:
        row["time_vs_faiss"] = row["seconds"] / by_name["faiss"]["seconds"]
        row["objective_vs_faiss"] = row["objective"] / by_name["faiss"]["objective"] - 1
    print(f"\n{'method':<10}{'seconds':>10}{'x faiss':>9}{'iters':>7}{'objective':>18}{'vs faiss':>11}")
    for row in rows:
        print(f"{row['method']:<10}{row['seconds']:>10.1f}{row['time_vs_faiss']:>9.2f}{row['n_iter']:>7}"
              f"{row['objective']:>18.6e}{row['objective_vs_faiss']:>+11.4%}")

    out = "results/kmeans_quick.json" if args.quick else "results/kmeans.json"
    write_json(out, {
        "benchmark": "kmeans", "n": n, "d": d, "k": k, "iterations": iterations, "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} vCPUs, shared with other jobs (timings noisy)",
        "results": rows,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
