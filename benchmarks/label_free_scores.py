"""Label-free scores (nolabel.select) of clusterings at N = 70,000 over three spaces of D = 64.

Data: three synthetic spaces of the same N rows, each an L2-normalised 64-dimensional Gaussian
mixture over one shared latent partition into 10 groups, with less structure from one space to the
next ("network": clear groups; "multilevel": weaker; "pixels": weak), like the PCA-64 + L2 spaces a
user prepares. Clusterings scored: spherical k-means with K = 10, 20, 40 made in the "network"
space, and uniformly random ids with K = 20. All six scores, default settings (sample of 10,000
rows, k = 20 neighbours, 5 folds).

Timings: the first clustering cold (the process's first call, so it pays the torch and faiss
imports), every clustering without a cache, and every clustering again with one shared `cache` (the
k-NN of the sampled rows and the stability k-means computed once per space, and per K). Also times
scikit-learn's silhouette_score(metric="cosine") on the same sample against nolabel's O(n K D) form,
and checks that the two agree.

    .venv/bin/python benchmarks/label_free_scores.py           # -> results/label_free_scores.json
    .venv/bin/python benchmarks/label_free_scores.py --quick   # N = 10,000 -> results/label_free_scores_quick.json
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from nolabel import select
from nolabel.cluster import KMeans
from nolabel.io import write_json

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Spread of the group centres in each space (noise has unit variance per dimension).
SPACES = {"network": 0.6, "multilevel": 0.35, "pixels": 0.2}


def make_spaces(n: int, d: int, groups: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = rng.integers(0, groups, n)
    spaces = {}
    for name, spread in SPACES.items():
        centres = (rng.standard_normal((groups, d)) * spread).astype(np.float32)
        x = centres[latent] + rng.standard_normal((n, d), dtype=np.float32)
        spaces[name] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return spaces, latent


def make_clusterings(spaces: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    out = {}
    for k in (10, 20, 40):
        km = KMeans(n_clusters=k, n_init=1, max_iter=30, spherical=True, random_state=seed, device="cpu")
        out[f"kmeans-{k}@network"] = km.fit(spaces["network"]).labels_
    # its own stream: default_rng(seed) again would replay the latent partition's draws
    out["random-20"] = np.random.default_rng([seed, 1]).integers(0, 20, n)
    return out


def per_score_seconds(result: dict) -> dict[str, float]:
    return {s: sum(t.values()) for s, t in result["seconds"].items()}


def print_table(title: str, results: dict[str, dict], timings: dict[str, dict]) -> None:
    scores = list(select.SCORES)
    print(f"\n{title}")
    head = f"{'clustering':<20}" + "".join(f"{s + ('^' if select.SCORES[s].higher_is_better else 'v'):>17}"
                                          for s in scores)
    print(head)
    for name, result in results.items():
        print(f"{name:<20}" + "".join(f"{result['scores'][s]['mean']:>17.4f}" for s in scores))
    print("\nseconds (all 3 spaces)" + " " * 2 + "".join(f"{s:>17}" for s in scores) + f"{'total':>10}")
    for label, rows in timings.items():
        for name, seconds in rows.items():
            cells = "".join(f"{seconds['per_score'][s]:>17.2f}" for s in scores)
            print(f"{(label + ' ' + name)[:24]:<24}{cells}{seconds['total']:>10.2f}")


def silhouette_check(spaces: dict[str, np.ndarray], labels: np.ndarray) -> dict:
    from sklearn.metrics import silhouette_score

    x = spaces["network"]
    rows = select.sample_rows(len(labels), select.DEFAULT_SAMPLE_SIZE, 0)
    t0 = time.perf_counter()
    ours = select.silhouette(x, labels)
    t1 = time.perf_counter()
    theirs = float(silhouette_score(x[rows], labels[rows], metric="cosine"))
    t2 = time.perf_counter()
    return dict(rows=len(rows), nolabel=ours, sklearn=theirs, abs_diff=abs(ours - theirs),
                nolabel_s=t1 - t0, sklearn_s=t2 - t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10,000, for a smoke run")
    args = parser.parse_args()
    n, d = (10_000, 64) if args.quick else (70_000, 64)
    spaces, _ = make_spaces(n, d, groups=10, seed=0)
    clusterings = make_clusterings(spaces, n, seed=0)
    print(f"N = {n:,}, spaces {list(spaces)} of D = {d}; clusterings {list(clusterings)}", flush=True)

    results, timings = {}, {"no cache": {}, "cache": {}}
    for name, labels in clusterings.items():
        result = select.score_clustering(labels, spaces)
        results[name] = result
        timings["no cache"][name] = dict(per_score=per_score_seconds(result), total=result["seconds_total"])
        print(f"  {name}: {result['seconds_total']:.2f} s without cache", flush=True)
    cache: dict = {}
    for name, labels in clusterings.items():
        result = select.score_clustering(labels, spaces, cache=cache)
        assert all(result["scores"][s] == results[name]["scores"][s] for s in select.SCORES), name
        timings["cache"][name] = dict(per_score=per_score_seconds(result), total=result["seconds_total"])
        print(f"  {name}: {result['seconds_total']:.2f} s with the shared cache", flush=True)

    print_table(f"Mean over the 3 spaces (^ higher is better, v lower), N = {n:,}", results, timings)
    per_space = {name: {s: r["scores"][s]["per_space"] for s in select.SCORES} for name, r in results.items()}
    print("\nper space:")
    for name, values in per_space.items():
        print(f"  {name}: " + "; ".join(f"{s} " + ", ".join(f"{sp}={v:.3f}" for sp, v in vals.items())
                                        for s, vals in values.items()))
    agreement = select.consensus(clusterings)
    print("\nconsensus (mean AMI with the other clusterings): "
          + ", ".join(f"{k}={v:.3f}" for k, v in agreement.items()))
    check = silhouette_check(spaces, clusterings["kmeans-20@network"])
    print(f"\nsilhouette on {check['rows']:,} rows: nolabel {check['nolabel']:.8f} in {check['nolabel_s']:.3f} s, "
          f"scikit-learn {check['sklearn']:.8f} in {check['sklearn_s']:.2f} s (|diff| {check['abs_diff']:.1e})")

    machine = dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                   load_average=os.getloadavg())
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in machine["load_average"]))
    out = RESULTS / ("label_free_scores_quick.json" if args.quick else "label_free_scores.json")
    write_json(out, dict(
        quick=args.quick, machine=machine,
        data=dict(n=n, d=d, spaces=SPACES, groups=10),
        settings=dict(sample_size=select.DEFAULT_SAMPLE_SIZE, n_neighbors=select.DEFAULT_N_NEIGHBORS,
                      n_folds=select.DEFAULT_N_FOLDS, random_state=0),
        scores={name: {s: dict(mean=r["scores"][s]["mean"], per_space=r["scores"][s]["per_space"],
                               higher_is_better=r["scores"][s]["higher_is_better"]) for s in select.SCORES}
                for name, r in results.items()},
        seconds=timings,
        seconds_per_space={name: r["seconds"] for name, r in results.items()},
        consensus=agreement,
        silhouette_vs_sklearn=check,
    ))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
