"""Throughput of `nolabel extract` on a folder of JPEGs vs the pure forward pass of the same model.

Both measured in one run, same model, batch size, precision and thread settings: the pure forward
pass runs the model on random tensors already in memory (the ceiling); extraction decodes JPEGs
(ImageNet-like 500x375 photos), resizes, crops, normalises, runs the model and writes features to
disk. The ratio shows how well decoding is overlapped with compute.

    .venv/bin/python benchmarks/extract.py            # resnet18 at 224 and 112, 1024 images
    .venv/bin/python benchmarks/extract.py --quick    # 128 images, a smoke run
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nolabel.features import ExtractOptions, default_workers, extract
from nolabel.io import write_json
from nolabel.models import create

ROOT = Path(__file__).resolve().parents[1]


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


def pure_forward(backbone, size: int, batch_size: int, n: int, precision: str) -> float:
    """Images/s of the model alone on random inputs, as the extractor runs it (channels_last)."""
    model = backbone.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        model(x)  # warm-up: oneDNN picks its kernels on the first call
        batches = max(1, n // batch_size)
        start = time.perf_counter()
        for _ in range(batches):
            model(x).float()
        return batches * batch_size / (time.perf_counter() - start)


def nolabel_extract(backbone, folder: Path, size: int, batch_size: int, precision: str, workers: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="nolabel-bench-"))
    try:
        options = ExtractOptions(batch_size=batch_size, image_size=size, precision=precision, workers=workers)
        start = time.perf_counter()
        store = extract(f"images:{folder}", backbone, out / "f", options=options, progress=False)
        seconds = time.perf_counter() - start
        return store.n / seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--sizes", default="224,112")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--images", type=Path, default=Path(tempfile.gettempdir()) / "nolabel-bench-jpegs")
    args = parser.parse_args(argv)

    n = 128 if args.quick else 1024
    folder = make_jpegs(args.images, n)
    if len(list(folder.glob("*.jpg"))) != n:  # a larger cached folder: use exactly n images
        folder = make_jpegs(args.images.with_name(f"{args.images.name}-{n}"), n)
    torch.manual_seed(0)
    backbone = create(args.model, pretrained=False)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        forward = pure_forward(backbone, size, args.batch_size, n, args.precision)
        extracted = nolabel_extract(backbone, folder, size, args.batch_size, args.precision, args.workers)
        rows.append({"model": args.model, "image_size": size, "batch_size": args.batch_size,
                     "precision": args.precision, "workers": args.workers, "images": n,
                     "pure_forward_img_s": round(forward, 1), "extract_img_s": round(extracted, 1),
                     "ratio": round(extracted / forward, 3)})
        print(f"{args.model} @ {size}: forward {forward:.1f} img/s, extract {extracted:.1f} img/s "
              f"({extracted / forward:.2f} of forward)", file=sys.stderr)

    header = f"{'model':<10} {'size':>4} {'batch':>5} {'prec':>4} {'workers':>7} {'forward img/s':>13} {'extract img/s':>13} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<10} {r['image_size']:>4} {r['batch_size']:>5} {r['precision']:>4} {r['workers']:>7} "
              f"{r['pure_forward_img_s']:>13} {r['extract_img_s']:>13} {r['ratio']:>6}")
    if not args.quick:
        write_json(ROOT / "results" / "extract.json", {
            "benchmark": "nolabel extract on JPEG folder vs pure forward pass, same model and batch",
            "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                        "torch": torch.__version__},
            "images": "synthetic photo-like 500x375 JPEGs, quality 90",
            "rows": rows,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
