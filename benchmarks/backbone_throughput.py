"""Forward throughput of backbones on this machine: fp32 vs bf16 autocast + channels_last.

Prints a table and writes results/backbone_throughput.json. Each configuration runs one warm-up
batch, then timed batches for at least --seconds; img/s is the median over the timed batches.
`--quick` runs a smoke test (small batch, one timed batch).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from nolabel.io import write_json
from nolabel.models import create

CONFIGS = [  # (model, image size)
    ("resnet18", 224),
    ("efficientnet_lite0", 64),
    ("efficientnet_lite0", 224),
]


def measure(backbone: torch.nn.Module, size: int, batch: int, bf16: bool, seconds: float, quick: bool) -> dict:
    x = torch.randn(batch, 3, size, size)
    model = backbone
    if bf16:
        model = backbone.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)  # warm-up
        start, min_batches = time.perf_counter(), 1 if quick else 3
        while len(times) < min_batches or (not quick and time.perf_counter() - start < seconds):
            t0 = time.perf_counter()
            out = model(x)
            times.append(time.perf_counter() - t0)
    backbone.to(memory_format=torch.contiguous_format)
    return {"img_per_s": batch / statistics.median(times), "batches": len(times), "out_dtype": str(out.dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    batch = 8 if args.quick else args.batch

    rows = []
    for name, size in CONFIGS:
        backbone = create(name, pretrained=False).eval()
        x = torch.randn(4, 3, size, size)
        with torch.inference_mode():
            reference = backbone(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = backbone.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
            backbone.to(memory_format=torch.contiguous_format)
        rel_err = ((low.float() - reference).norm() / reference.norm()).item()
        for bf16 in (False, True):
            result = measure(backbone, size, batch, bf16, args.seconds, args.quick)
            rows.append({"model": name, "image_size": size, "batch": batch,
                         "precision": "bf16+channels_last" if bf16 else "fp32", **result,
                         "bf16_relative_feature_error": rel_err if bf16 else 0.0})
            print(f"{name:<20} {size:>4}px  batch {batch:<3} {rows[-1]['precision']:<20} "
                  f"{result['img_per_s']:8.1f} img/s" + (f"  (bf16 rel. feature error {rel_err:.1e})" if bf16 else ""),
                  flush=True)
    write_json("results/backbone_throughput.json", {
        "quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "bf16_supported_natively": bool(getattr(torch.backends, "mkldnn", None)
                                        and torch.backends.mkldnn.is_available()
                                        and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "rows": rows,
    })


if __name__ == "__main__":
    main()
