"""Self-labeling after SCAN: train on the confident predictions (threshold 0.99) from strong views.

Reads --scan DIR (a `nolabel scan` output). Frozen mode: --features DIR and --augmented DIR... (features
of strongly augmented views); whole-network mode: --data SPEC (the backbone comes from scan.pt).
When no sample is confident the step says so and keeps the SCAN result. Writes the self-labeled
clustering (`nolabel.clustering`: the train images and every --eval-features / --eval-data set)
beside selflabel.pt, probabilities.npy and selflabel.json into --out; an interrupted run resumes.
"""
from __future__ import annotations

import argparse

from .scan import add_eval_arguments, check_eval_sets


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scan", required=True, metavar="DIR", help="output folder of `nolabel scan`")
    p.add_argument("--features", metavar="DIR", help="feature folder (frozen mode)")
    p.add_argument("--augmented", nargs="*", default=[], metavar="DIR", help="features of strongly augmented views")
    p.add_argument("--data", metavar="SPEC", help="dataset spec (whole-network mode)")
    p.add_argument("--image-size", type=int, metavar="S")
    p.add_argument("--out", required=True, metavar="DIR")
    add_eval_arguments(p)
    p.add_argument("--threshold", type=float, default=0.99, help="confidence above which a prediction is a label")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3 frozen, 1e-4 whole network)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--no-class-balance", action="store_true")
    p.add_argument("--entropy-weight", type=float, default=0.0,
                   help="also maximise the entropy of the mean prediction (keeps clusters from emptying)")
    p.add_argument("--ema", type=float, metavar="DECAY", help="EMA of the weights for the final predictions")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where training runs (auto: a GPU when one is visible)")
    p.add_argument("--random-state", "--seed", type=int, default=0)
    p.add_argument("--force", action="store_true",
                   help="replace a self-labeling result in --out made from other inputs or settings (the same "
                        "ones: kept or resumed)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..cluster.selflabel import SelfLabelConfig, run_selflabel
    from ..clustering import format_metrics
    from ..io import read_json

    distributed.init()
    check_eval_sets(args)
    lr = args.lr if args.lr is not None else (1e-3 if args.features else 1e-4)
    config = SelfLabelConfig(threshold=args.threshold, epochs=args.epochs, batch_size=args.batch_size, lr=lr,
                             weight_decay=args.weight_decay, class_balance=not args.no_class_balance,
                             entropy_weight=args.entropy_weight, ema_decay=args.ema, random_state=args.random_state,
                             bf16=args.bf16, device=args.device)
    scored = run_selflabel(args.scan, args.out, features=args.features, augmented=args.augmented, data=args.data,
                           image_size=args.image_size, config=config, eval_features=args.eval_features,
                           eval_data=args.eval_data, force=args.force, show_progress=not args.quiet)
    if distributed.is_main():
        print(read_json(f"{args.out}/selflabel.json")["message"])
        print(format_metrics(scored))
    return 0
