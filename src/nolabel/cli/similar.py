"""List the images of a run nearest to one image, in the run's feature space.

IMAGE is one of the run's images - its path, its name in the dataset (as in assignments.csv) or a
file name only one of them has - or any other image file, whose features are made exactly as the
run made its own. Nearness is the cosine similarity in the space the clustering was made in (its
PCA, if any; faiss), the same as the report's similar images. Prints one line per image: rank,
similarity, cluster, path (or name for array datasets).
"""
from __future__ import annotations

import argparse

from .predict import add_run_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder or clustering folder")
    p.add_argument("image", metavar="IMAGE", help="an image of the run (path or name) or any image file")
    p.add_argument("-k", type=int, default=20, help="how many images to list (default: 20)")
    p.add_argument("--source", default="train", help="whose images to search: train or an eval set (default: train)")
    add_run_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..similar import similar

    found = similar(args.run_dir, args.image, args.k, clustering=args.clustering, source=args.source,
                    weights=args.weights, trust_checkpoint=args.trust_checkpoint, device=args.device)
    where = "one of the run's images" if found.row is not None else "a new image"
    print(f"{found.query}: {where}, cluster {found.cluster}")
    print(f"{'rank':>4} {'similarity':>10} {'cluster':>7}  path")
    for n in found.neighbors:
        print(f"{n.rank:>4} {n.similarity:>10.4f} {n.cluster:>7}  {n.path or n.item}")
    return 0
