"""Write the HTML report of a run folder (nolabel run) or a cluster folder (nolabel cluster --out).

The page shows what was run, the metrics with their protocol, a clusters x classes heatmap, the
cluster sizes, a 2-D map of the images (UMAP), every cluster's most and least typical and some random
images, the most uncertain images, and each shown image's most similar ones. It is one file that
opens offline; with very many images the thumbnails go to a folder beside it.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder or cluster folder")
    p.add_argument("--out", metavar="FILE", help="HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--source", default="train", help="whose images the cluster browser shows (default: train)")
    p.add_argument("--typical", type=int, default=8, metavar="N", help="images closest to each centre (default: 8)")
    p.add_argument("--random", type=int, default=4, metavar="N", help="random images per cluster (default: 4)")
    p.add_argument("--atypical", type=int, default=4, metavar="N",
                   help="images farthest from each centre, or least confident (default: 4)")
    p.add_argument("--uncertain", type=int, default=24, metavar="N", help="least confident images listed (default: 24)")
    p.add_argument("--similar", type=int, default=8, metavar="K",
                   help="nearest images shown for each image on click (default: 8; 0: none)")
    p.add_argument("--map-points", type=int, default=20_000, metavar="N",
                   help="images on the 2-D map, a seeded random sample beyond (default: 20000; 0: no map)")
    p.add_argument("--thumb", type=int, default=64, metavar="PX", help="largest thumbnail side (default: 64)")
    p.add_argument("--page-size", type=int, default=50, metavar="N", help="clusters per page (default: 50)")
    p.add_argument("--force", action="store_true", help="overwrite --out even if it is not a nolabel report")


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    path = write_report(args.run_dir, out=args.out, source=args.source, n_typical=args.typical,
                        n_random=args.random, n_atypical=args.atypical, n_uncertain=args.uncertain,
                        n_similar=args.similar, map_points=args.map_points, thumb_px=args.thumb,
                        page_size=args.page_size, force=args.force, progress=True)
    print(path)
    return 0
