"""SCAN head selection at ImageNet scale: the whole-dataset SCAN loss of 10 heads, 1.28M x 1000, 50 neighbours.

After training, SCAN keeps the head with the lowest loss over the whole dataset
(`nolabel.cluster.scan.scan_loss_of_probabilities`, then `select_head`): for every anchor and each
of its 50 neighbours, -log <p(x), p(n)>, plus the entropy of the mean prediction. The old code built
an (N, M, K) float64 tensor, 512 GB per head here. Goals: peak RSS <= 4 GiB, <= 2 minutes.

Setting: what `_train` does past `HEAD_SELECTION_IN_MEMORY_BYTES` - each head's float32 (N, K)
probabilities (5.1 GB) are in a .npy file it has just written, scored from it by memory map (in
1 GiB row blocks, two at a time). Here the parent process writes 10 such files of synthetic
probabilities (~52 GB in --workdir) and int64 neighbours (N, 50); a fresh child process then loads
the neighbours into memory, as `_train` holds them, and scores every head. Before each head is
timed the child reads its file once with read() (page cache only, nothing mapped), as `_train`'s
just-written file would be cached; that read is reported apart.

Memory: the child's own peak RSS, VmHWM from /proc/self/status (not getrusage's ru_maxrss, which
Linux carries over fork and exec from the parent that generated the data), read after the imports
and the neighbours (baseline) and at the end; a thread also samples RssAnon and RssFile every 0.1 s
(anonymous memory vs pages of mapped files).

Synthetic data: N rows in 1000 equal-sized clusters in random order; 70% of each row's neighbours are
from its cluster, the rest uniform. Head h: softmax(a_h * onehot(its own relabelling of the row's
cluster) + s_h * noise), noise rows drawn from a pool of 8192 Gaussian rows; heads differ in a_h, s_h.

Also checks, at small N, the chunked result (in memory and from a memory map in several blocks)
against the old dense float64 formula.

    .venv/bin/python benchmarks/scan_head_selection.py           # full size -> results/scan_head_selection.json
    .venv/bin/python benchmarks/scan_head_selection.py --quick   # 40k x 100, 3 heads -> results/scan_head_selection_quick.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nolabel.cluster.scan import entropy, scan_loss_of_probabilities, select_head
from nolabel.io import write_json

ROOT = Path(__file__).resolve().parents[1]
ENTROPY_WEIGHT = 5.0

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
import numpy as np
from nolabel.cluster.scan import scan_loss_of_probabilities, select_head

def status(*keys):
    out = {}
    for line in open("/proc/self/status"):
        key = line.split(":")[0]
        if key in keys:
            out[key] = int(line.split()[1]) * 1024
    return out

peaks = {"RssAnon": 0, "RssFile": 0}
stop = threading.Event()
def sample():
    while not stop.is_set():
        for key, value in status("RssAnon", "RssFile").items():
            peaks[key] = max(peaks[key], value)
        stop.wait(0.1)

workdir, n_heads, block_bytes = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
neighbors = np.load(workdir / "neighbors.npy")
baseline = status("VmHWM", "VmRSS")
threading.Thread(target=sample, daemon=True).start()
heads, losses = [], []
started = time.perf_counter()
warm_total = 0.0
for h in range(n_heads):
    path = workdir / f"head{h}.npy"
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:  # into the page cache, as a just-written file is
        buffer = bytearray(64 << 20)
        while f.readinto(buffer):
            pass
    warm = time.perf_counter() - t
    warm_total += warm
    t = time.perf_counter()
    loss = scan_loss_of_probabilities(np.load(path, mmap_mode="r"), neighbors, 5.0, block_bytes=block_bytes)
    seconds = time.perf_counter() - t
    losses.append(loss)
    heads.append({"head": h, "seconds": seconds, "warm_read_seconds": warm, **loss})
    print(f"  head {h}: {seconds:.1f} s (+ {warm:.1f} s reading the file into the page cache)", file=sys.stderr, flush=True)
best = select_head(losses)
total = time.perf_counter() - started - warm_total
stop.set()
end = status("VmHWM", "VmRSS", "RssAnon", "RssFile")
print(json.dumps({"heads": heads, "best_head": best, "selection_seconds": total, "warm_read_seconds": warm_total,
                  "baseline": baseline, "end": end, "sampled_peaks": peaks}))
"""


def old_dense_loss(probabilities: np.ndarray, neighbors: np.ndarray, entropy_weight: float) -> dict[str, float]:
    """The implementation this benchmark replaces: one (N, M, K) float64 tensor."""
    p = torch.as_tensor(np.asarray(probabilities), dtype=torch.float64)
    nb = torch.as_tensor(np.asarray(neighbors), dtype=torch.long)
    agreement = (p[:, None, :] * p[nb]).sum(-1)
    consistency = float(-agreement.clamp_min(1e-8).log().mean())
    spread = float(entropy(p.mean(0)))
    return {"total": consistency - entropy_weight * spread, "consistency": consistency, "entropy": spread}


def synthetic_clusters(n: int, k: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(cluster of each row (N,), neighbours (N, M) int64): 70% of the neighbours from the row's cluster."""
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.arange(n) % k)
    members = np.argsort(truth, kind="stable")  # rows of cluster c: members[start[c]:start[c] + size[c]]
    size = np.bincount(truth, minlength=k)
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    neighbors = np.empty((n, m), dtype=np.int64)
    for s in range(0, n, 1 << 16):
        e = min(n, s + (1 << 16))
        y = truth[s:e, None]
        same = members[start[y] + (rng.random((e - s, m)) * size[y]).astype(np.int64)]
        neighbors[s:e] = np.where(rng.random((e - s, m)) < 0.7, same, rng.integers(0, n, (e - s, m)))
    return truth, neighbors


def synthetic_head(truth: np.ndarray, k: int, h: int, seed: int, out: np.ndarray) -> None:
    """Head h's float32 probabilities into `out` (N, K), chunk by chunk."""
    rng = np.random.default_rng([seed, h])
    relabel = rng.permutation(k)
    pool = rng.standard_normal((8192, k), dtype=np.float32)
    signal, noise = 3.0 + 0.75 * h, 1.0 + 0.25 * (h % 4)
    for s in range(0, len(truth), 1 << 15):
        e = min(len(truth), s + (1 << 15))
        logits = pool[rng.integers(0, len(pool), e - s)] * np.float32(noise)
        logits[np.arange(e - s), relabel[truth[s:e]]] += np.float32(signal)
        logits -= logits.max(1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(1, keepdims=True)
        out[s:e] = logits


def small_check(seed: int = 0) -> dict:
    """The chunked loss (in memory, and from a memmap in 1-row to 3-row blocks) vs the old dense formula."""
    n, k, m, n_heads = 2000, 50, 10, 3
    truth, neighbors = synthetic_clusters(n, k, m, seed)
    worst, chosen = 0.0, []
    with tempfile.TemporaryDirectory() as folder:
        old, new = [], []
        for h in range(n_heads):
            p = np.empty((n, k), dtype=np.float32)
            synthetic_head(truth, k, h, seed, p)
            np.save(Path(folder) / f"{h}.npy", p)
            mapped = np.load(Path(folder) / f"{h}.npy", mmap_mode="r")
            reference = old_dense_loss(p, neighbors, ENTROPY_WEIGHT)
            old.append(reference)
            variants = [scan_loss_of_probabilities(p, neighbors, ENTROPY_WEIGHT),
                        scan_loss_of_probabilities(p, neighbors, ENTROPY_WEIGHT, chunk_rows=1),
                        scan_loss_of_probabilities(p.astype(np.float64), neighbors, ENTROPY_WEIGHT, chunk_rows=n + 1)]
            variants += [scan_loss_of_probabilities(mapped, neighbors, ENTROPY_WEIGHT, block_bytes=rows * k * 4)
                         for rows in (1, 3, 700)]
            new.append(variants[0])
            del mapped
            for got in variants:
                for key, value in reference.items():
                    worst = max(worst, abs(got[key] - value) / abs(value))
        chosen = [select_head(old), select_head(new)]
    return {"n": n, "k": k, "m": m, "heads": n_heads, "max_relative_difference": worst,
            "chosen_head_old_new": chosen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40,000 x 100, 20 neighbours, 3 heads")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "nolabel-bench-scan-heads")
    parser.add_argument("--keep", action="store_true", help="keep the probability files for another run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:  # small, but still scored from disk in several blocks
        n, k, m, n_heads, block_bytes = 40_000, 100, 20, 3, 4 << 20
    else:
        n, k, m, n_heads, block_bytes = 1_280_000, 1000, 50, 10, 1 << 30

    check = small_check(args.seed)
    print(f"small-N check (N={check['n']}, K={check['k']}, M={check['m']}, {check['heads']} heads): chunked vs the "
          f"old dense float64 formula, max relative difference {check['max_relative_difference']:.1e}; chosen head "
          f"old {check['chosen_head_old_new'][0]}, new {check['chosen_head_old_new'][1]}", flush=True)

    args.workdir.mkdir(parents=True, exist_ok=True)
    need = n_heads * n * k * 4 + n * m * 8
    ready = (args.workdir / "done.json").is_file() and \
        json.loads((args.workdir / "done.json").read_text()) == {"n": n, "k": k, "m": m, "heads": n_heads, "seed": args.seed}
    if not ready:
        free = shutil.disk_usage(args.workdir).free
        if free < need * 1.05:
            print(f"{args.workdir}: {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free", file=sys.stderr)
            return 1
        t = time.perf_counter()
        truth, neighbors = synthetic_clusters(n, k, m, args.seed)
        np.save(args.workdir / "neighbors.npy", neighbors)
        del neighbors
        for h in range(n_heads):
            out = np.lib.format.open_memmap(args.workdir / f"head{h}.npy", mode="w+", dtype=np.float32, shape=(n, k))
            synthetic_head(truth, k, h, args.seed, out)
            out.flush()
            del out
            print(f"  wrote head {h}", file=sys.stderr, flush=True)
        (args.workdir / "done.json").write_text(json.dumps({"n": n, "k": k, "m": m, "heads": n_heads, "seed": args.seed}))
        print(f"data: {n_heads} heads x {n} x {k} float32 + neighbours ({need / 1e9:.1f} GB) written in "
              f"{time.perf_counter() - t:.0f} s", flush=True)

    done = subprocess.run([sys.executable, "-c", CHILD, str(args.workdir), str(n_heads), str(block_bytes)],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return 1
    r = json.loads(done.stdout.strip().splitlines()[-1])
    gib = 2 ** 30
    peak, base = r["end"]["VmHWM"] / gib, r["baseline"]["VmHWM"] / gib

    print(f"\nhead selection: {n_heads} heads, N = {n:,}, K = {k}, M = {m}, probabilities float32 memory-mapped "
          f"({n * k * 4 / 1e9:.2f} GB a head), scored in {block_bytes / gib:g} GiB blocks")
    print(f"{'head':>4}{'seconds':>10}{'consistency':>14}{'entropy':>10}{'total':>12}")
    for row in r["heads"]:
        print(f"{row['head']:>4}{row['seconds']:>10.1f}{row['consistency']:>14.6f}{row['entropy']:>10.6f}"
              f"{row['total']:>12.6f}")
    print(f"chosen head: {r['best_head']}")
    print(f"\n{'':<48}{'measured':>10}{'goal':>8}")
    print(f"{'selection time, s (files already in page cache)':<48}{r['selection_seconds']:>10.1f}{120:>8}")
    print(f"{'peak RSS, GiB (VmHWM of the selection process)':<48}{peak:>10.2f}{4:>8}")
    print(f"{'  of which before scoring (Python, torch, nbrs)':<48}{base:>10.2f}")
    print(f"{'  sampled peak anonymous memory, GiB':<48}{r['sampled_peaks']['RssAnon'] / gib:>10.2f}")
    print(f"{'  sampled peak pages of mapped files, GiB':<48}{r['sampled_peaks']['RssFile'] / gib:>10.2f}")
    print(f"(reading the files into the page cache first: {r['warm_read_seconds']:.1f} s, not counted)")
    machine = dict(platform=platform.platform(), processor=platform.processor(), cpus=os.cpu_count(),
                   load_average=os.getloadavg())
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in machine["load_average"]))
    out = ROOT / "results" / ("scan_head_selection_quick.json" if args.quick else "scan_head_selection.json")
    write_json(out, {
        "benchmark": "scan head selection", "quick": args.quick, "n": n, "k": k, "m": m, "heads": n_heads,
        "block_bytes": block_bytes, "entropy_weight": ENTROPY_WEIGHT,
        "rss_measure": "VmHWM of a fresh child process (baseline after imports + neighbours, and at the end); "
                       "RssAnon / RssFile sampled every 0.1 s",
        "selection_seconds": r["selection_seconds"], "warm_read_seconds": r["warm_read_seconds"],
        "peak_rss_gib": peak, "baseline_rss_gib": base,
        "sampled_peak_anon_gib": r["sampled_peaks"]["RssAnon"] / gib,
        "sampled_peak_file_gib": r["sampled_peaks"]["RssFile"] / gib,
        "goal": {"seconds": 120, "peak_rss_gib": 4}, "best_head": r["best_head"], "per_head": r["heads"],
        "small_check": check, "machine": machine,
    })
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
