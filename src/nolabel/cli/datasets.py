"""List the dataset specs and whether each can be loaded here; with a SPEC, load it and summarise it.

Spec grammar: NAME[:PATH][:SPLIT], e.g. fashion-mnist:test, cifar10:/data/cifar:train, folder:/photos.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", metavar="SPEC", help="load this spec and print its size and classes")
    p.add_argument("--allow-download", action="store_true",
                   help="download a missing downloadable dataset (Fashion-MNIST) from its official location")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import list_specs, load

    if args.spec is None:
        rows = [(r.pattern, {True: "yes", False: "no", None: "-"}[r.available], r.note, r.description)
                for r in list_specs()]
        header = ("SPEC", "HERE", "WHERE", "DESCRIPTION")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
        return 0
    ds = load(args.spec, allow_download=args.allow_download)
    storage = f"array {ds.images.dtype} {ds.images.shape}" if hasattr(ds, "images") else f"files under {ds.root}"
    print(f"{args.spec}: {len(ds)} images, {len(ds.classes)} classes, {storage}")
    counts = np.bincount(ds.labels[ds.labels >= 0], minlength=len(ds.classes))
    for label, (name, count) in enumerate(zip(ds.classes, counts)):
        print(f"  {label:>4}  {count:>8}  {name}")
    if (ds.labels < 0).any():
        print(f"  {'-1':>4}  {int((ds.labels < 0).sum()):>8}  (unlabelled)")
    return 0
