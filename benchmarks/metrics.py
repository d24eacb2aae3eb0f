"""nolabel.metrics against scikit-learn: speed of the full evaluation suite and equality of values.

Cases (seeded, built in memory):
- ImageNet-sized evaluation: N = 1,281,167 samples, 1000 classes with ImageNet's train-split size
  profile (most classes 1300 images, 105 smaller ones down to 732), 1000 clusters. Each sample
  falls in its class's cluster with p = 0.45, in the cluster of one of 5 neighbouring classes with
  p = 0.25 (confusable classes), else in a cluster drawn by a log-normal popularity (k-means-like
  uneven cluster sizes). scikit-learn's side is what a user calls: contingency_matrix, ACC as
  contingency_matrix + linear_sum_assignment (sklearn has no ACC), NMI, AMI and ARI, each
  building its own contingency; nolabel's builds one contingency and derives everything from it.
- Overclustering AMI: N = 100,000, 1000 classes, 10,000 clusters (each class split into ~10
  sub-clusters, 30% noise).
- AMI's worst case for grouping equal marginals (nolabel only): 1000 x 1000 all-distinct row and
  column sums, N = 1,281,167.

nolabel timings are the best of 3 runs, scikit-learn's a single run (tens of seconds each).
Run: .venv/bin/python benchmarks/metrics.py [--quick]   → table on stdout, results/metrics.json
(--quick writes results/metrics_quick.json instead)
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from sklearn.metrics.cluster import contingency_matrix

from nolabel import metrics as M
from nolabel.io import write_json

RESULTS = Path(__file__).resolve().parent.parent / "results"


def imagenet_like(rng, n_classes: int, full_size: int, n_missing: int):
    """(pred, labels): noisy clusters of classes with ImageNet's uneven class-size profile."""
    sizes = np.full(n_classes, full_size)
    smaller = rng.choice(n_classes, max(1, int(0.105 * n_classes)), replace=False)
    sizes[smaller] -= rng.multinomial(n_missing, np.full(smaller.size, 1 / smaller.size))
    labels = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    n = labels.size
    home = rng.permutation(n_classes)  # class -> its cluster
    popularity = rng.lognormal(0.0, 1.0, n_classes)
    u = rng.random(n)
    neighbour = home[(labels + rng.integers(1, 6, n)) % n_classes]
    noise = rng.choice(n_classes, n, p=popularity / popularity.sum())
    pred = np.where(u < 0.45, home[labels], np.where(u < 0.70, neighbour, noise))
    return pred, labels


def overclustered(rng, n: int, n_classes: int, n_clusters: int):
    labels = rng.integers(0, n_classes, n)
    per_class = n_clusters // n_classes
    pred = labels * per_class + rng.integers(0, per_class, n)
    noise = rng.random(n) < 0.3
    pred[noise] = rng.integers(0, n_clusters, noise.sum())
    return pred, labels


def distinct_marginals(n: int, n_rows: int, n_cols: int) -> np.ndarray:
    """A count matrix whose row sums and column sums are all distinct (north-west corner rule)."""
    a = np.arange(n_rows) + (n - n_rows * (n_rows - 1) // 2) // n_rows
    b = np.arange(n_cols) + (n - n_cols * (n_cols - 1) // 2) // n_cols
    a[-1] += n - a.sum()
    b[-1] += n - b.sum()
    counts = np.zeros((n_rows, n_cols), dtype=np.int64)
    rows, cols, i, j = a.copy(), b.copy(), 0, 0
    while i < n_rows and j < n_cols:
        take = min(rows[i], cols[j])
        counts[i, j] += take
        rows[i] -= take
        cols[j] -= take
        i += rows[i] == 0
        j += cols[j] == 0
    return counts


def best_of(fn, repeats: int = 3):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def once(fn):
    return best_of(fn, repeats=1)


def sklearn_accuracy(pred, labels) -> float:
    """ACC the usual way: sklearn contingency, Hungarian, unmatched clusters take their majority."""
    counts = contingency_matrix(pred, labels)
    assigned = counts.argmax(axis=1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    assigned[rows] = cols
    return counts[np.arange(len(counts)), assigned].sum() / counts.sum()


def full_suite(pred, labels) -> list[dict]:
    """Per-metric rows: seconds and value for both libraries."""
    rows = []
    t_ours, c = best_of(lambda: M.contingency(labels, pred))
    t_ref, ref_counts = once(lambda: contingency_matrix(pred, labels))
    rows.append(dict(metric="contingency", nolabel_s=t_ours, sklearn_s=t_ref,
                     max_abs_diff=float(np.abs(c.counts - ref_counts).max())))
    ours = {
        "ACC hungarian": lambda: c.accuracy(c.mapping("hungarian")),
        "NMI": c.nmi,
        "AMI": c.ami,
        "ARI": c.ari,
    }
    reference = {
        "ACC hungarian": lambda: sklearn_accuracy(pred, labels),
        "NMI": lambda: skm.normalized_mutual_info_score(labels, pred),
        "AMI": lambda: skm.adjusted_mutual_info_score(labels, pred),
        "ARI": lambda: skm.adjusted_rand_score(labels, pred),
    }
    for name in ours:
        t_ours, value = best_of(ours[name])
        print(f"  sklearn {name} ...", flush=True)
        t_ref, ref_value = once(reference[name])
        rows.append(dict(metric=name, nolabel_s=t_ours, sklearn_s=t_ref, nolabel=value,
                         sklearn=float(ref_value), max_abs_diff=abs(value - ref_value)))
    t_eval, result = best_of(lambda: M.evaluate(labels, pred))
    total = dict(
        metric="full suite", nolabel_s=t_eval, sklearn_s=sum(r["sklearn_s"] for r in rows),
        max_abs_diff=max(r["max_abs_diff"] for r in rows),
        note="nolabel: evaluate() end to end (contingency, ACC hungarian+majority, NMI, AMI, ARI, "
             "MI, purity); sklearn: sum of the rows above",
    )
    names = {"acc_hungarian": "ACC hungarian", "nmi": "NMI", "ami": "AMI", "ari": "ARI"}
    for key, row_name in names.items():
        reference_value = next(r["sklearn"] for r in rows if r["metric"] == row_name)
        total["max_abs_diff"] = max(total["max_abs_diff"], abs(result[key] - reference_value))
    rows.append(total)
    return rows


def ami_case(pred, labels) -> dict:
    t_ours, value = best_of(lambda: M.ami(labels, pred))
    print("  sklearn AMI ...", flush=True)
    t_ref, ref_value = once(lambda: skm.adjusted_mutual_info_score(labels, pred))
    return dict(metric="AMI", nolabel_s=t_ours, sklearn_s=t_ref, nolabel=value,
                sklearn=float(ref_value), max_abs_diff=abs(value - ref_value))


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'metric':<15}{'nolabel s':>11}{'sklearn s':>11}{'speed-up':>10}{'max |diff|':>12}")
    for r in rows:
        if "sklearn_s" in r:
            speedup = f"{r['sklearn_s'] / r['nolabel_s']:>9.0f}x"
            reference = f"{r['sklearn_s']:>11.3f}{speedup}{r['max_abs_diff']:>12.1e}"
        else:
            reference = f"{'-':>11}{'-':>10}{'-':>12}"
        print(f"{r['metric']:<15}{r['nolabel_s']:>11.3f}{reference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.quick:
        suite_shape = dict(n_classes=100, full_size=500, n_missing=1_000)
        ami_shape = dict(n=10_000, n_classes=100, n_clusters=1_000)
        worst_shape = (50_000, 100, 100)
    else:
        suite_shape = dict(n_classes=1000, full_size=1300, n_missing=18_833)  # N = 1,281,167
        ami_shape = dict(n=100_000, n_classes=1000, n_clusters=10_000)
        worst_shape = (1_281_167, 1000, 1000)

    pred, labels = imagenet_like(rng, **suite_shape)
    c = M.contingency(labels, pred)
    suite_data = dict(n=int(pred.size), n_clusters=c.n_clusters, n_classes=c.n_classes,
                      distinct_cluster_sizes=int(np.unique(c.cluster_sizes).size),
                      distinct_class_sizes=int(np.unique(c.class_sizes).size))
    print(f"full suite: {suite_data}", flush=True)
    suite_rows = full_suite(pred, labels)

    ami_pred, ami_labels = overclustered(rng, **ami_shape)
    c = M.contingency(ami_labels, ami_pred)
    ami_data = dict(n=int(ami_pred.size), n_clusters=c.n_clusters, n_classes=c.n_classes)
    print(f"overclustering AMI: {ami_data}", flush=True)
    ami_row = ami_case(ami_pred, ami_labels)

    worst = distinct_marginals(*worst_shape)
    t_worst, _ = best_of(lambda: M.expected_mutual_info(worst))
    worst_row = dict(metric="EMI", nolabel_s=t_worst, note="nolabel only")

    print("\nper-metric nolabel rows reuse one contingency; sklearn's each build their own")
    print_table(f"Full suite, N = {suite_data['n']:,}, {suite_data['n_clusters']} clusters x "
                f"{suite_data['n_classes']} classes (noisy clusters of ImageNet-sized classes)",
                suite_rows)
    print_table(f"AMI, N = {ami_data['n']:,}, {ami_data['n_clusters']:,} clusters x "
                f"{ami_data['n_classes']} classes", [ami_row])
    print_table(f"EMI with all {worst_shape[1]} + {worst_shape[2]} marginals distinct, "
                f"N = {worst_shape[0]:,}", [worst_row])
    # the load average says whether other jobs shared the cores while this ran (2 vCPUs here)
    machine = dict(platform=platform.platform(), processor=platform.processor(),
                   cpus=os.cpu_count(), load_average=os.getloadavg())
    print("\nload average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in machine["load_average"]))
    # a smoke run must not replace the real measurements
    out = RESULTS / ("metrics_quick.json" if args.quick else "metrics.json")
    write_json(out, dict(
        quick=args.quick, machine=machine,
        full_suite=dict(data=suite_data, rows=suite_rows),
        ami_overclustering=dict(data=ami_data, row=ami_row),
        emi_distinct_marginals=dict(shape=worst_shape, row=worst_row),
    ))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
