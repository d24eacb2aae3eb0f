"""Assign new images to the clusters of a finished run.

The images of --data go through exactly what made the run's features (the backbone, its weights -
checked by sha256 -, the eval transform, backend, precision and batch size), then through the run's
chosen clustering: k-means through its PCA to the nearest centroid, SCAN or self-labeling through
its head, whole-network SCAN through the network it trained. --out gets one line per image: path
(row for array datasets such as Fashion-MNIST), cluster, confidence, and class - the class the
cluster maps to - when the run had labels. Images that cannot be read are listed on stderr.
"""
from __future__ import annotations

import argparse
import sys


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of commands that extract new images as a run did (predict, similar)."""
    p.add_argument("--clustering", metavar="NAME",
                   help="another clustering of the run: its folder in RUN_DIR (scan, baseline/cluster, ...) or its "
                        "method in the results table (default: the run's chosen clustering)")
    p.add_argument("--weights", metavar="FILE",
                   help="the backbone's weights file, when the run's is no longer where the run found it")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a weights file that needs full unpickling (runs code from the file)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="where extraction runs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder or clustering folder")
    p.add_argument("--data", required=True, metavar="SPEC", help="the new images: a dataset spec such as images:DIR")
    p.add_argument("--out", required=True, metavar="FILE", help="CSV file to write")
    p.add_argument("--features", metavar="DIR", help="keep the new images' features in DIR (default: not kept)")
    add_run_arguments(p)
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..predict import predict

    result = predict(args.run_dir, args.data, args.out, clustering=args.clustering, features=args.features,
                     weights=args.weights, trust_checkpoint=args.trust_checkpoint, device=args.device,
                     force=args.force, progress=not args.quiet)
    for item, reason in result.skipped:
        print(f"skipped {item}: {reason}", file=sys.stderr)
    sizes = np.bincount(result.cluster) if len(result.cluster) else np.zeros(0, int)
    counts = ", ".join(f"{c}: {n}" for c, n in enumerate(sizes.tolist()) if n)
    print(f"{args.out}: {len(result.cluster)} images assigned ({counts})"
          + (f"; {len(result.skipped)} could not be read" if result.skipped else ""))
    return 0
