"""Fit PCA + k-means on a feature folder, assign every eval folder, and score where labels exist.

Scores each eval set twice: with the cluster->class mapping fitted on the train features (the fully
unsupervised protocol of Zheltonozhskii et al.) and fitted on the eval set itself (SCAN's).
Writes the clustering into --out: assignments.csv, metrics.json, clustering.json, centroids.npy, pca.npz
(`nolabel.clustering`; `nolabel report DIR` shows it).
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import KMeansConfig  # the defaults of a run's kmeans section

    p.add_argument("--features", required=True, metavar="DIR", help="train feature folder (fits PCA and k-means)")
    p.add_argument("--eval-features", nargs="*", default=[], metavar="DIR", help="feature folders to assign and score")
    p.add_argument("--n-clusters", "--k", type=int, required=True, help="number of clusters")
    p.add_argument("--pca", type=int, metavar="N", help="PCA components (default: keep all dimensions)")
    p.add_argument("--no-pca", action="store_true", help="cluster the features as they are")
    p.add_argument("--whiten", action="store_true")
    p.add_argument("--l2", action="store_true", help="L2-normalise rows after PCA")
    p.add_argument("--spherical", action="store_true", help="cosine k-means")
    p.add_argument("--n-init", type=int, default=KMeansConfig.n_init, metavar="N",
                   help=f"k-means restarts, the lowest inertia kept (default {KMeansConfig.n_init})")
    p.add_argument("--max-iter", type=int, default=KMeansConfig.max_iter, metavar="N")
    p.add_argument("--random-state", "--seed", type=int, default=0)
    p.add_argument("--mapping", choices=["hungarian", "majority"], default="hungarian")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--force", action="store_true",
                   help="replace a clustering made from other features or settings (the same ones: kept)")
    p.add_argument("--json", action="store_true", help="print metrics.json instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from ..cluster.pca_kmeans import cluster_stores
    from ..clustering import format_metrics
    from ..config import EvaluateConfig, KMeansConfig, PCAConfig
    from ..store import FeatureStore

    pca = PCAConfig(n_components=args.pca, whiten=args.whiten, l2_normalize=args.l2, enabled=not args.no_pca)
    kmeans = KMeansConfig(n_clusters=args.n_clusters, n_init=args.n_init, max_iter=args.max_iter,
                          spherical=args.spherical,
                          random_state=args.random_state)
    evaluate = EvaluateConfig(mapping=args.mapping)
    for c in (pca, kmeans, evaluate):
        c.validate()
    train = FeatureStore.open(args.features)
    evals = [FeatureStore.open(d) for d in args.eval_features]
    results = cluster_stores(train, evals, args.out, pca=pca, kmeans=kmeans, evaluate=evaluate, force=args.force)
    print(json.dumps(results, indent=2) if args.json else format_metrics(results))
    return 0
