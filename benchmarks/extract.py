"""Feature extraction on every backend x precision: whole extraction vs the forward pass alone, and
each one's features against torch fp32's.

Two cases, each run on torch fp32, torch bf16, ONNX Runtime fp32, OpenVINO fp32 and OpenVINO bf16
(those installed), same batch size and threads:

- EfficientNet-Lite0 (ImageNet weights) at 96 px on the first `--fm-images` Fashion-MNIST test
  images: an array dataset, resized + normalised a batch at a time in the extracting process.
- ResNet-50 (random weights: the published ones need a download) at 224 px on a folder of
  photo-like 500x375 JPEGs, decoded in DataLoader workers.

"forward" runs the backend on a random batch already in memory (the ceiling); "extract" is
`nolabel.extract` into a new folder (warm export cache): its steady rate from the manifest (the
batches: input, forward, writing) and its wall-clock rate (everything, incl. loading the exported
model). The two are measured in alternation, `--repeats` times each, and reported as max / median.
Error: worst relative L2 distance of a row to torch fp32's, and the lowest cosine similarity.

The goal (issue 17): all 70,000 Fashion-MNIST images at 96 px through EfficientNet-Lite0 with
`nolabel extract`'s defaults (backend auto, batch 64, float16 store) against `--backend torch`, in
fp32 and in bf16: wall-clock seconds of the whole `extract` call (warm export cache), auto and torch
run back to back, alternating, so that their ratio holds on a shared machine.

    .venv/bin/python benchmarks/extract.py            # all, writes results/extract.json and BENCHMARKS.md
    .venv/bin/python benchmarks/extract.py --quick    # small, no goal run, prints only
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nolabel.data import load
from nolabel.data.dataset import ArrayImageDataset
from nolabel.features import ExtractOptions, default_workers, extract
from nolabel.io import read_json, write_json
from nolabel.models import backends, create

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markdown_section import replace_section  # noqa: E402 - a sibling script

ROOT = Path(__file__).resolve().parents[1]
COMBOS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def make_jpegs(folder: Path, n: int, seed: int = 0) -> Path:
    """Photo-like JPEGs (smooth colour fields + texture, quality 90), 500x375 as ImageNet's median."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return folder
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for i in range(len(existing), n):
        f = rng.uniform(0.005, 0.05, size=(3, 2))
        phase = rng.uniform(0, 6.3, size=3)
        img = np.stack([127 + 100 * np.sin(f[c, 0] * xx + f[c, 1] * yy + phase[c]) for c in range(3)], axis=-1)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def forward_rate(forward, size: int, batch_size: int, batches: int) -> float:
    """Images/s of the backend alone on a random normalised batch (one warm-up batch first)."""
    x = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    forward(x)
    start = time.perf_counter()
    for _ in range(batches):
        forward(x)
    return batches * batch_size / (time.perf_counter() - start)


def extract_once(dataset, backbone, options: ExtractOptions) -> tuple[dict, float, np.ndarray]:
    """`nolabel.extract` into a new folder: (its manifest, wall-clock seconds, its features)."""
    out = Path(tempfile.mkdtemp(prefix="nolabel-bench-"))
    try:
        start = time.perf_counter()
        store = extract(dataset, backbone, out / "f", options=options, progress=False, log=lambda m: None)
        return store.manifest, time.perf_counter() - start, np.array(store.features)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def errors(features: np.ndarray, reference: np.ndarray, chunk: int = 8192) -> tuple[float, float]:
    """Worst relative L2 error of a row and lowest cosine similarity, in float64 a chunk at a time."""
    worst, lowest = 0.0, 1.0
    for start in range(0, len(reference), chunk):
        a = features[start:start + chunk].astype(np.float64)
        b = reference[start:start + chunk].astype(np.float64)
        nb = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
        worst = max(worst, float((np.linalg.norm(a - b, axis=1) / nb).max()))
        cos = (a * b).sum(1) / (np.maximum(np.linalg.norm(a, axis=1), 1e-12) * nb)
        lowest = min(lowest, float(cos.min()))
    return worst, lowest


def run_case(case: dict, repeats: int, forward_batches: int) -> list[dict]:
    torch.manual_seed(0)
    backbone = create(case["model"], pretrained=case["pretrained"])
    rows, reference = [], None
    for backend, precision in COMBOS:
        reason = backends.unsupported(backend, precision)
        if reason:
            print(f"  {backend} {precision}: skipped ({reason})", file=sys.stderr)
            continue
        forward = backends.load(backbone, case["size"], backend=backend, precision=precision)  # exports (untimed)
        load_before = loadavg()
        fwd, steady, wall = [], [], []
        features = None
        for _ in range(repeats):
            fwd.append(forward_rate(forward, case["size"], case["batch_size"], forward_batches))
            options = ExtractOptions(batch_size=case["batch_size"], image_size=case["size"], precision=precision,
                                     backend=backend, dtype="float32", workers=case["workers"])
            manifest, seconds, features = extract_once(case["dataset"], backbone, options)
            steady.append(manifest["images_per_second"])
            wall.append(len(features) / seconds)
        if (backend, precision) == ("torch", "fp32"):
            reference = features
        rel, cos = errors(features, reference) if reference is not None else (float("nan"), float("nan"))
        row = {"model": case["model"], "image_size": case["size"], "batch_size": case["batch_size"],
               "data": case["data"], "images": len(case["dataset"]), "backend": backend, "precision": precision,
               "forward_img_s_max": round(max(fwd), 1), "forward_img_s_median": round(statistics.median(fwd), 1),
               "extract_img_s_max": round(max(steady), 1), "extract_img_s_median": round(statistics.median(steady), 1),
               "extract_wall_img_s_median": round(statistics.median(wall), 1),
               "ratio_median": round(statistics.median(steady) / statistics.median(fwd), 3),
               "max_relative_error_vs_torch_fp32": float(f"{rel:.2g}"), "min_cosine_vs_torch_fp32": round(cos, 7),
               "loadavg": [load_before, loadavg()], "repeats": repeats,
               "backend_version": forward.info().get("backend_version")}
        rows.append(row)
        print(f"  {backend:<11} {precision}: forward {row['forward_img_s_median']:7.1f}  extract "
              f"{row['extract_img_s_median']:7.1f} (wall {row['extract_wall_img_s_median']:.1f})  ratio "
              f"{row['ratio_median']:.2f}  err {rel:.1e}  cos {cos:.6f}  load {load_before:.2f}", file=sys.stderr)
    torch_fwd = next((r["forward_img_s_median"] for r in rows
                      if (r["backend"], r["precision"]) == ("torch", "fp32")), None)
    for r in rows:
        r["forward_speedup_vs_torch_fp32"] = round(r["forward_img_s_median"] / torch_fwd, 2) if torch_fwd else None
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | size | backend | precision | forward img/s (max / med) | extract img/s (max / med) | "
             "extract / forward | wall img/s | max rel. error | min cosine | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['image_size']} | {r['backend']} | {r['precision']} | "
                     f"{r['forward_img_s_max']:.0f} / {r['forward_img_s_median']:.0f} | "
                     f"{r['extract_img_s_max']:.0f} / {r['extract_img_s_median']:.0f} | {r['ratio_median']:.2f} | "
                     f"{r['extract_wall_img_s_median']:.0f} | {r['max_relative_error_vs_torch_fp32']:.1e} | "
                     f"{r['min_cosine_vs_torch_fp32']:.6f} | {r['loadavg'][0]:.1f}–{r['loadavg'][1]:.1f} |")
    return "\n".join(lines)


def goal(repeats: int, data: str = "fashion-mnist") -> dict:
    """The goal run (see the module docstring) on `data`: seconds per (backend, precision), the ratio
    torch / auto of each back-to-back pair (median over `repeats`), and each one's features against
    torch fp32's."""
    dataset = load(data)
    backbone = create("efficientnet_lite0", pretrained=True)
    chosen = {}
    for precision in backends.PRECISIONS:
        chosen[precision] = backends.resolve("auto", precision)
        backends.load(backbone, 96, backend=chosen[precision], precision=precision)  # the export, untimed
    seconds: dict[tuple[str, str], list[float]] = {}
    features, load_before = {}, loadavg()
    for _ in range(repeats):
        for precision in backends.PRECISIONS:
            for backend in ("auto", "torch"):
                manifest, took, features[backend, precision] = extract_once(
                    dataset, backbone, ExtractOptions(image_size=96, precision=precision, backend=backend))
                seconds.setdefault((backend, precision), []).append(took)
                print(f"  {backend:<5} {precision}: {took:6.1f} s ({manifest['backend']}), load {loadavg():.2f}",
                      file=sys.stderr)
    runs = []
    reference = features["torch", "fp32"]
    for (backend, precision), times in seconds.items():
        rel, cos = errors(features[backend, precision], reference)
        runs.append({"backend": backend, "ran_on": chosen[precision] if backend == "auto" else "torch",
                     "precision": precision, "seconds_median": round(statistics.median(times), 1),
                     "seconds": [round(t, 1) for t in times],
                     "img_s_median": round(len(dataset) / statistics.median(times), 1),
                     "max_relative_error_vs_torch_fp32": float(f"{rel:.2g}"),
                     "min_cosine_vs_torch_fp32": round(cos, 7)})

    def speedup(torch_precision: str, auto_precision: str) -> float:
        pairs = zip(seconds["torch", torch_precision], seconds["auto", auto_precision])
        return round(statistics.median(t / a for t, a in pairs), 2)

    return {"data": f"{data} ({len(dataset)} images), 96 px, efficientnet_lite0, batch 64, float16 store",
            "images": len(dataset), "repeats": repeats, "loadavg": [load_before, loadavg()], "runs": runs,
            "speedup_fp32": speedup("fp32", "fp32"), "speedup_bf16": speedup("bf16", "bf16"),
            "speedup_auto_fp32_vs_torch_bf16": speedup("bf16", "fp32"),
            "speedup_auto_bf16_vs_torch_fp32": speedup("fp32", "bf16")}


def goal_table(result: dict) -> str:
    lines = [f"{result['data']}:", "",
             "| run | ran on | precision | seconds (median) | img/s | max rel. error | min cosine |",
             "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {'defaults (auto)' if r['backend'] == 'auto' else '--backend torch'} | {r['ran_on']} | "
                     f"{r['precision']} | {r['seconds_median']:.1f} | {r['img_s_median']:.0f} | "
                     f"{r['max_relative_error_vs_torch_fp32']:.1e} | {r['min_cosine_vs_torch_fp32']:.6f} |")
    lines += ["", f"Speed-up of the defaults over `--backend torch`, same precision (median of back-to-back pairs): "
              f"**fp32 {result['speedup_fp32']:.2f}×**, **bf16 {result['speedup_bf16']:.2f}×**; auto fp32 over torch "
              f"bf16 {result['speedup_auto_fp32_vs_torch_bf16']:.2f}×, auto bf16 over torch fp32 "
              f"{result['speedup_auto_bf16_vs_torch_fp32']:.2f}×. Load average "
              f"{result['loadavg'][0]:.1f} → {result['loadavg'][1]:.1f}, {result['repeats']} pair(s) each."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few images, one repeat; prints only")
    parser.add_argument("--fm-images", type=int, default=4096)
    parser.add_argument("--jpegs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="efficientnet_lite0,resnet50", help="comma-separated; empty: none")
    parser.add_argument("--goal-repeats", type=int, default=1, help="back-to-back pairs of the goal run (0: none)")
    parser.add_argument("--goal-data", default="fashion-mnist", help="the goal run's dataset (default: all 70k)")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--images", type=Path, default=Path(tempfile.gettempdir()) / "nolabel-bench-jpegs")
    args = parser.parse_args(argv)
    if args.quick:
        args.fm_images, args.jpegs, args.repeats, args.goal_repeats = 512, 64, 1, 0

    cases = []
    if "efficientnet_lite0" in args.cases:
        fm = load("fashion-mnist:test")
        n = args.fm_images
        dataset = ArrayImageDataset(f"fashion-mnist:test[:{n}]", fm.images[:n], fm.labels[:n], fm.classes,
                                    fm.item_names[:n])
        cases.append({"model": "efficientnet_lite0", "pretrained": True, "size": 96, "batch_size": 128,
                      "dataset": dataset, "data": f"Fashion-MNIST test, first {n} (array dataset)",
                      "workers": args.workers})
    if "resnet50" in args.cases:
        folder = make_jpegs(args.images.with_name(f"{args.images.name}-{args.jpegs}"), args.jpegs)
        cases.append({"model": "resnet50", "pretrained": False, "size": 224, "batch_size": 64,
                      "dataset": load(f"images:{folder}"), "data": f"{args.jpegs} JPEGs 500x375 (files)",
                      "workers": args.workers})
    rows = []
    for case in cases:
        print(f"{case['model']} at {case['size']} px, {case['data']}:", file=sys.stderr)
        batches = max(2, min(10, len(case["dataset"]) // case["batch_size"]))
        rows += run_case(case, args.repeats, forward_batches=batches)
    if rows:
        print(table(rows))
    result = None
    if args.goal_repeats:
        print(f"goal: {args.goal_data} at 96 px, defaults vs --backend torch:", file=sys.stderr)
        result = goal(args.goal_repeats, args.goal_data)
        print(goal_table(result))
    if not args.quick:
        path = ROOT / "results" / "extract.json"
        previous = read_json(path) if path.exists() else {}
        write_json(path, {
            "benchmark": "extraction per backend x precision: whole extraction vs forward only, error vs torch fp32; "
                         "the goal run: Fashion-MNIST 70k end to end, defaults vs --backend torch",
            "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                        "torch": torch.__version__},
            "rows": rows or previous.get("rows", []),  # a run of one part keeps the other's last numbers
            "goal": result or previous.get("goal"),
        })
        if rows:
            replace_section(ROOT / "BENCHMARKS.md", "extract-backends", table(rows))
        if result:
            replace_section(ROOT / "BENCHMARKS.md", "extract-goal", goal_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
