"""Run one configuration end to end: extract -> PCA -> k-means -> metrics (+ raw-pixel baseline, report).

Without CONFIG it runs the built-in default: Fashion-MNIST (scikit-learn's digits when Fashion-MNIST
is not installed) clustered with PCA + k-means (K = 10) on raw pixels, EfficientNet-Lite0 and its
multi-level features, the clustering chosen without labels (`nolabel.pipeline.default_config`).
Each stage is skipped when its output in the run folder already matches, so an interrupted run resumes.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="run configuration (default: built-in)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a setting, e.g. --set kmeans.n_clusters=20 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<name>)")
    p.add_argument("--force", action="store_true", help="reuse a folder made by another configuration")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and stop")


def run(args: argparse.Namespace) -> int:
    from ..config import dump_config, load_config
    from ..pipeline import default_config, format_summary, run as run_config

    cfg = default_config(args.overrides) if args.config is None else load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    summary = run_config(cfg, args.out, force=args.force)
    print()
    print(format_summary(summary))
    if "report" in summary:
        print(f"\nreport: {summary['report']}")
    return 0
