"""Sweep PCA dimensions x numbers of clusters x seeds; write sweep.csv and the ablation plots.

ACC and ARI against PCA dimension and against the number of clusters (mean +- std over seeds), as
in Zheltonozhskii et al. A killed sweep resumes at the first missing row.
"""
from __future__ import annotations

import argparse


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, metavar="DIR", help="train feature folder")
    p.add_argument("--eval-features", nargs="*", default=[], metavar="DIR")
    p.add_argument("--pca", type=_int_list, required=True, metavar="D,D,...", help="e.g. 16,32,64,128")
    p.add_argument("--n-clusters", "--k", type=_int_list, required=True, metavar="K,K,...", help="e.g. 1000,1500,2000")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--whiten", action="store_true")
    p.add_argument("--l2", action="store_true")
    p.add_argument("--spherical", action="store_true")
    p.add_argument("--mapping", choices=["hungarian", "majority"], default="hungarian")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true",
                   help="start over in a folder that holds a sweep of other features or settings")


def run(args: argparse.Namespace) -> int:
    from ..store import FeatureStore
    from ..sweep import sweep

    train = FeatureStore.open(args.features)
    evals = [FeatureStore.open(d) for d in args.eval_features]
    path = sweep(train, evals, args.out, pca_dims=args.pca, ks=args.n_clusters, seeds=args.seeds,
                 max_iter=args.max_iter, whiten=args.whiten, l2_normalize=args.l2, spherical=args.spherical,
                 mapping=args.mapping, force=args.force)
    print(f"wrote {path} and plots in {path.parent}")
    return 0
