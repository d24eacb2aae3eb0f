"""TURTLE on frozen features of several spaces: the labelling whose linear classifiers learn it fastest in every space.

--features takes one feature folder per backbone (the same images, e.g. `nolabel extract` of the
same dataset through two backbones), each one space (or, with --split-levels, one per level of a
multi-level feature); each --eval-features set names its folders in the same order, comma-separated.
Several restarts run; the kept one is chosen without labels (--selection). Writes the TURTLE
clustering (`nolabel.clustering`) beside turtle.pt, probabilities.npy and turtle.json into --out; an
interrupted run resumes. --selflabel DIR then self-labels the task encoder there.
"""
from __future__ import annotations

import argparse

from ..config import TURTLE_INNER_STARTS, TURTLE_SELECTIONS, TurtleConfig

_DEFAULTS = TurtleConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", nargs="+", required=True, metavar="DIR", help="one feature folder per backbone")
    p.add_argument("--eval-features", nargs="*", default=[], metavar="DIR,DIR",
                   help="other images to assign and score: per set, one folder per backbone, comma-separated")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--pca", type=int, metavar="D", help="project each space wider than D to D PCA dimensions first")
    p.add_argument("--split-levels", action="store_true",
                   help="read a multi-level feature (efficientnet_lite0_multilevel) as one space per level")
    p.add_argument("--n-clusters", "-k", type=int, default=_DEFAULTS.n_clusters)
    p.add_argument("--gamma", type=float, default=_DEFAULTS.gamma,
                   help="weight of the entropies of the spaces' mean labellings (against collapse)")
    p.add_argument("--inner-steps", type=int, default=_DEFAULTS.inner_steps)
    p.add_argument("--inner-lr", type=float, default=_DEFAULTS.inner_lr)
    p.add_argument("--outer-lr", type=float, default=_DEFAULTS.outer_lr)
    p.add_argument("--steps", type=int, default=_DEFAULTS.steps, help="outer steps, each on a random batch")
    p.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    p.add_argument("--inner-start", choices=TURTLE_INNER_STARTS, default=_DEFAULTS.inner_start,
                   help="cold: fresh linear classifiers every outer step (the paper's); warm: keep them")
    p.add_argument("--restarts", type=int, default=_DEFAULTS.n_restarts)
    p.add_argument("--selection", choices=TURTLE_SELECTIONS, default=_DEFAULTS.selection,
                   help="how the kept restart is chosen, without labels")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where training runs (auto: a GPU when one is visible)")
    p.add_argument("--random-state", "--seed", type=int, default=0)
    p.add_argument("--selflabel", metavar="DIR", help="then self-label the task encoder into DIR (threshold 0.99)")
    p.add_argument("--force", action="store_true",
                   help="replace a result in --out made from other inputs or settings (the same ones: kept or resumed)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..cluster.turtle import run_turtle, run_turtle_selflabel
    from ..clustering import format_metrics
    from ..io import read_json

    config = TurtleConfig(n_clusters=args.n_clusters, gamma=args.gamma, inner_steps=args.inner_steps,
                          inner_lr=args.inner_lr, outer_lr=args.outer_lr, steps=args.steps,
                          batch_size=args.batch_size, inner_start=args.inner_start, n_restarts=args.restarts,
                          selection=args.selection, random_state=args.random_state, device=args.device)
    evals = [entry.split(",") for entry in args.eval_features]
    scored = run_turtle(args.out, args.features, pca_components=args.pca, split_levels=args.split_levels,
                        config=config, eval_features=evals, force=args.force, show_progress=not args.quiet)
    summary = read_json(f"{args.out}/turtle.json")
    kept = summary["restarts"][summary["best_restart"]]
    print(f"{args.out}: restart {summary['best_restart']} of {len(summary['restarts'])} kept by {config.selection} "
          f"(TURTLE loss {kept['loss']:.4f}, fit {kept['fit']:.4f}, entropy {kept['entropy']:.4f}, "
          f"{kept['clusters_used']} clusters used)")
    print(format_metrics(scored))
    if args.selflabel:
        from ..config import SelfLabelConfig

        scored = run_turtle_selflabel(args.out, args.selflabel, args.features,
                                      config=SelfLabelConfig(lr=1e-3, epochs=20, device=args.device),
                                      eval_features=evals, force=args.force, show_progress=not args.quiet)
        print(read_json(f"{args.selflabel}/selflabel.json")["message"])
        print(format_metrics(scored))
    return 0
