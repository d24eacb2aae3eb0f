"""Extract a backbone's features over a dataset into a feature folder (resumable; torchrun-aware).

Writes DIR/features.npy (N x D), labels.npy, index.csv, skipped.csv and manifest.json. A killed run
resumes when started again with the same arguments.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec (see `nolabel datasets`)")
    p.add_argument("--model", required=True, metavar="NAME", help="backbone name (see `nolabel models`)")
    p.add_argument("--weights", metavar="W", help="checkpoint file, URL or published-weight tag")
    p.add_argument("--out", required=True, metavar="DIR", help="output feature folder")
    p.add_argument("--batch-size", type=int, default=64, metavar="N")
    p.add_argument("--image-size", type=int, metavar="S", help="eval crop size (default: the model's)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="stored feature dtype")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="compute precision; bf16 roughly doubles CPU throughput again")
    p.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="where the forward pass runs (default auto: the fastest installed that computes in "
                        "--precision; the model is exported once into the cache)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes decoding image files (default: cores - 1); in-memory datasets (Fashion-MNIST, "
                        "CIFAR, ...) are resized a batch at a time in the extracting process")
    p.add_argument("--on-bad-image", choices=["skip", "fail"], default="skip")
    p.add_argument("--force", action="store_true",
                   help="replace a feature folder made with other settings (one with the same settings is "
                        "kept as it is: rerunning a finished extraction succeeds at once)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that needs full unpickling (runs code from the file)")
    p.add_argument("--download", action="store_true",
                   help="fetch the published weight named by --model from its URL if it is not cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..features import ExtractOptions, extract

    options = ExtractOptions(
        batch_size=args.batch_size, image_size=args.image_size, device=args.device, dtype=args.dtype,
        precision=args.precision, backend=args.backend, workers=args.workers, on_bad_image=args.on_bad_image,
    )
    store = extract(args.data, args.model, args.out, weights=args.weights,
                    allow_pickle=args.trust_checkpoint, download=args.download, options=options, force=args.force,
                    progress=not args.quiet, log=print)
    from .. import distributed

    if distributed.is_main():
        m = store.manifest
        print(f"{store.path}: {m['n']} x {m['dim']} {m['dtype']} features"
              f" ({m['n_skipped']} skipped, {m['images_per_second']} images/s)")
    return 0
