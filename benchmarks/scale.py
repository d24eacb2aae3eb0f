"""ImageNet scale: 1,281,167 x 2048 float16 features on disk -> PCA-256 -> k-means 1000 -> metrics.

A float32 copy of these features alone would be 10.5 GB; the goal is a peak RSS of at most 8 GB for
the whole cluster stage (streaming PCA over the memory map, k-means on the 256-d projection). The
features are synthetic but shaped like a ResNet-50's: 1000 classes with ImageNet's train class
sizes, class means in a 128-d subspace, non-negative (post-ReLU) values, written in chunks to a
feature store exactly as `nolabel extract` leaves it. The stage runs in a fresh process and reads
its own peak RSS (VmHWM), not the data generator's.

    .venv/bin/python benchmarks/scale.py            # full size (about 5.2 GB on disk)
    .venv/bin/python benchmarks/scale.py --quick    # 100k rows, a smoke run
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nolabel.io import save_npy, write_json
from nolabel.store import FEATURES, LABELS, MANIFEST, write_index, write_skipped

ROOT = Path(__file__).resolve().parents[1]
N_IMAGENET, DIM, CLASSES = 1_281_167, 2048, 1000


def imagenet_class_sizes(n: int, classes: int, seed: int = 0) -> np.ndarray:
    """One common size for most classes and a tenth of them smaller (as ImageNet's train split:
    1300 images for most classes, fewer for about a hundred), summing to exactly n."""
    rng = np.random.default_rng(seed)
    base = int(np.ceil(n / classes * 1.015))
    sizes = np.full(classes, base)
    small = rng.choice(classes, size=classes // 10, replace=False)
    sizes[small] -= rng.multinomial(base * classes - n, np.full(len(small), 1 / len(small)))
    assert sizes.sum() == n and sizes.min() > 0
    return sizes


def write_features(folder: Path, n: int, chunk: int = 65536, seed: int = 0) -> None:
    if (folder / MANIFEST).exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = imagenet_class_sizes(n, CLASSES, seed)
    labels = rng.permutation(np.repeat(np.arange(CLASSES), sizes))
    latent_means = rng.normal(0, 1, (CLASSES, 128)).astype(np.float32)
    mixing = (rng.normal(0, 1, (128, DIM)) / np.sqrt(128)).astype(np.float32)
    features = np.lib.format.open_memmap(folder / FEATURES, mode="w+", dtype=np.float16, shape=(n, DIM))
    for start in range(0, n, chunk):
        y = labels[start:start + chunk]
        z = latent_means[y] + rng.normal(0, 1.2, (len(y), 128)).astype(np.float32)
        x = np.maximum(z @ mixing + rng.normal(0, 0.3, (len(y), DIM)).astype(np.float32), 0)
        features[start:start + len(y)] = x
    features.flush()
    del features
    save_npy(folder / LABELS, labels.astype(np.int64))
    write_index(folder, [f"train/{i}" for i in range(n)])
    write_skipped(folder, [])
    write_json(folder / MANIFEST, {"dataset": "synthetic-imagenet-like", "model": "synthetic", "n": n, "dim": DIM,
                                   "dtype": "float16", "classes": [], "complete": True})


STAGE = """
import json, sys, time
from nolabel.config import KMeansConfig, PCAConfig
from nolabel.cluster.pca_kmeans import cluster_stores
from nolabel.store import FeatureStore
store = FeatureStore.open(sys.argv[1])
start = time.perf_counter()
results = cluster_stores(store, [], sys.argv[2], pca=PCAConfig(n_components=256),
                         kmeans=KMeansConfig(k=1000, max_iter=20), force=True, progress=False)
total = time.perf_counter() - start
timings = json.load(open(sys.argv[2] + "/clustering.json"))["timings_seconds"]
m = results["train"]["fit_on_eval"]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child would report the
# parent's peak (here the data generator's); VmHWM belongs to this address space alone.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"total_seconds": total, "timings": timings, "peak_rss_gb": peak_kb / 2**20, "acc": m["acc"], "nmi": m["nmi"], "ami": m["ami"], "ari": m["ari"],
    "explained_variance": results["_clustering"]["explained_variance"]}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "nolabel-bench-scale")
    parser.add_argument("--keep", action="store_true", help="keep the 5 GB feature file for another run")
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else N_IMAGENET
    store = args.workdir / f"features-{n}"
    t = time.perf_counter()
    write_features(store, n)
    print(f"features: {n} x {DIM} float16 ({n * DIM * 2 / 2**30:.1f} GiB) ready in {time.perf_counter() - t:.0f} s",
          file=sys.stderr)
    out = args.workdir / "cluster"
    done = subprocess.run([sys.executable, "-c", STAGE, str(store), str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    r = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [("PCA fit + transform (2048 -> 256)", r["timings"]["pca_fit"]), ("k-means fit (k=1000, 20 it.)",
            r["timings"]["kmeans_fit"]), ("assign", r["timings"]["assign"]), ("metrics", r["timings"]["metrics"]),
            ("whole stage, with file writes", r["total_seconds"])]
    print(f"{'stage':<34} {'seconds':>8}")
    print("-" * 43)
    for name, seconds in rows:
        print(f"{name:<34} {seconds:8.1f}")
    print(f"peak RSS {r['peak_rss_gb']:.2f} GiB (a float32 copy of the features: {n * DIM * 4 / 2**30:.1f} GiB)")
    print(f"ACC {r['acc']:.4f}  NMI {r['nmi']:.4f}  AMI {r['ami']:.4f}  ARI {r['ari']:.4f}")
    result = {"benchmark": "features on disk -> PCA-256 -> k-means 1000 -> metrics", "n": n, "dim": DIM,
              "dtype": "float16", "data": "synthetic ImageNet-like (1000 classes, 128-d latent, ReLU)",
              "stages_seconds": {k: round(v, 2) for k, v in rows}, "peak_rss_gib": round(r["peak_rss_gb"], 3),
              "goal_peak_rss_gib": 8, "explained_variance": r["explained_variance"],
              "metrics": {k: r[k] for k in ("acc", "nmi", "ami", "ari")},
              "load_average_at_end": list(__import__("os").getloadavg())}
    write_json(ROOT / "results" / ("scale_quick.json" if args.quick else "scale.json"), result)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
