"""Export a run's clusters as folders: one subfolder per cluster holding its images.

RUN_DIR is a run folder (`nolabel run`: its chosen clustering) or a clustering folder. Each cluster's
folder is cluster_07, or cluster_07_<class> when the run had labels; image files are symbolic links
to the originals (--link, the default) or copies (--copy); images of array datasets (Fashion-MNIST,
CIFAR, digits, ...) are written as PNG. DIR/clusters.csv lists every image: its original path (or
name), cluster, class, confidence, typicality (1 the most typical member of its cluster, 0 the
least) and its file in DIR. The originals are only read. A non-empty DIR is refused; --force
replaces an earlier export there, never a folder of other files.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder or clustering folder")
    p.add_argument("--to", required=True, metavar="DIR", help="folder to write (new or empty)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--link", dest="mode", action="store_const", const="link",
                     help="symbolic links to the original files (the default)")
    how.add_argument("--copy", dest="mode", action="store_const", const="copy", help="copies of the files")
    p.set_defaults(mode="link")
    p.add_argument("--clustering", metavar="NAME",
                   help="another clustering of the run: its folder in RUN_DIR (scan, baseline/cluster, ...) or its "
                        "method in the results table (default: the run's chosen clustering)")
    p.add_argument("--source", default="train", help="whose images to export: train or an eval set (default: train)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from ..export import CLUSTERS_CSV, export

    to = export(args.run_dir, args.to, mode=args.mode, clustering=args.clustering, source=args.source,
                force=args.force, progress=not args.quiet)
    print(f"{to} (one folder per cluster; {to / CLUSTERS_CSV} lists every image)")
    return 0
