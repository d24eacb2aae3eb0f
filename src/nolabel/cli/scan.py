"""SCAN clustering: mine nearest neighbours, train clustering heads, keep the lowest-loss head.

Heads only on frozen features (--features DIR, optionally --augmented DIR... with features of
augmented views; fast, for large data and CPUs), or the whole network on images (--data SPEC --model
NAME --weights FILE, e.g. from `nolabel pretrain simclr`). Writes the SCAN clustering
(`nolabel.clustering`: the train images and every --eval-features / --eval-data set, scored where
labelled) beside neighbors.npy, scan.pt, probabilities.npy and scan.json into --out; an interrupted
run resumes.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", metavar="DIR", help="feature folder (frozen mode)")
    p.add_argument("--augmented", nargs="*", default=[], metavar="DIR",
                   help="feature folders of augmented views of the same images (frozen mode)")
    p.add_argument("--data", metavar="SPEC", help="dataset spec (whole-network mode)")
    p.add_argument("--model", metavar="NAME", help="backbone (whole-network mode)")
    p.add_argument("--weights", metavar="FILE", help="backbone checkpoint (whole-network mode)")
    p.add_argument("--image-size", type=int, metavar="S")
    p.add_argument("--out", required=True, metavar="DIR")
    add_eval_arguments(p)
    p.add_argument("--n-clusters", "--k", type=int, default=10, help="number of clusters")
    p.add_argument("--n-neighbors", "--neighbors", type=int, default=20, help="neighbours mined per image")
    p.add_argument("--pca", type=int, metavar="D",
                   help="frozen mode: project the features to D PCA dimensions before mining neighbours and "
                        "training the heads (self-labeling reuses the PCA)")
    p.add_argument("--heads", type=int, default=10, help="heads trained together; the lowest-loss one is kept")
    p.add_argument("--entropy-weight", type=float, default=5.0)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3 frozen, 1e-4 whole network)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--hidden-dim", type=int, default=0, help="MLP heads with this hidden width (0: linear)")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where training runs (auto: a GPU when one is visible)")
    p.add_argument("--random-state", "--seed", type=int, default=0)
    p.add_argument("--force", action="store_true",
                   help="replace a SCAN result in --out made from other inputs or settings (the same ones: "
                        "kept or resumed)")
    p.add_argument("--quiet", action="store_true")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-features", nargs="*", default=[], metavar="DIR",
                   help="frozen mode: feature folders of other images (same backbone) to assign and score")
    p.add_argument("--eval-data", nargs="*", default=[], metavar="SPEC",
                   help="whole-network mode: datasets to assign (through the trained backbone) and score")


def check_eval_sets(args: argparse.Namespace) -> None:
    """Refuse, before any training, eval sets of the wrong kind or feature folders that are not there."""
    from ..errors import NolabelError
    from ..store import FeatureStore

    if args.eval_features and args.features is None or args.eval_data and args.features is not None:
        raise NolabelError("--eval-features goes with --features (frozen mode), --eval-data with --data "
                           "(whole-network mode)")
    for folder in args.eval_features:
        FeatureStore.open(folder)


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..cluster.scan import ScanConfig, run_scan
    from ..clustering import format_metrics
    from ..io import read_json

    distributed.init()
    check_eval_sets(args)
    lr = args.lr if args.lr is not None else (1e-3 if args.features else 1e-4)
    config = ScanConfig(n_clusters=args.n_clusters, n_heads=args.heads, entropy_weight=args.entropy_weight,
                        epochs=args.epochs, batch_size=args.batch_size, lr=lr, weight_decay=args.weight_decay,
                        hidden_dim=args.hidden_dim, n_neighbors=args.n_neighbors, random_state=args.random_state,
                        bf16=args.bf16, device=args.device)
    scored = run_scan(args.out, features=args.features, augmented=args.augmented, data=args.data, model=args.model,
                      weights=args.weights, image_size=args.image_size, pca_components=args.pca, config=config,
                      eval_features=args.eval_features, eval_data=args.eval_data, force=args.force,
                      show_progress=not args.quiet)
    if distributed.is_main():
        summary = read_json(f"{args.out}/scan.json")
        best = summary["head_losses"][summary["best_head"]]
        print(f"{args.out}: head {summary['best_head']} of {len(summary['head_losses'])} kept "
              f"(SCAN loss {best['total']:.4f}, consistency {best['consistency']:.4f}, entropy {best['entropy']:.4f})")
        if summary["neighbor_purity"] is not None:
            print(f"neighbour purity (top {summary['n_neighbors']}): {summary['neighbor_purity']:.4f}")
        print(format_metrics(scored))
    return 0
