"""`nolabel` command line: one thin module per command, each with `add_arguments` and `run`.

Heavy libraries (torch and the numerical stack) are imported inside each command's `run`, so `nolabel --help` and
`nolabel evaluate` start fast. A `NolabelError` is the user's to fix: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import NolabelError

# command name -> (module under nolabel.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("run", "the main job: one configuration end to end"),
    "datasets": ("datasets", "list dataset specs, or load one and summarise it"),
    "models": ("models", "list backbones and published self-supervised weights"),
    "extract": ("extract", "extract backbone features over a dataset"),
    "cluster": ("cluster", "PCA + k-means on features, assign and score"),
    "sweep": ("sweep", "ablation over PCA dimensions, cluster counts and seeds"),
    "pretrain": ("pretrain", "train a backbone from scratch with SimCLR (SCAN's pretext step)"),
    "scan": ("scan", "SCAN: mine neighbours, train clustering heads, keep the lowest-loss head"),
    "selflabel": ("selflabel", "self-labeling after SCAN on confident predictions"),
    "turtle": ("turtle", "TURTLE: the labelling whose linear classifiers fit best in several feature spaces"),
    "deepcluster": ("deepcluster", "train a backbone with DeepCluster v1 or v2"),
    "evaluate": ("evaluate", "score cluster assignments against labels"),
    "report": ("report", "write the HTML report of a run"),
    "export": ("export", "copy or link a run's images into one folder per cluster"),
    "predict": ("predict", "assign new images to a run's clusters"),
    "similar": ("similar", "list a run's images nearest to an image"),
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="nolabel",
        description="Group images into clusters without labels and measure the clusters.",
    )
    parser.add_argument("--version", action="version", version=f"nolabel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f".{module_name}", __name__)
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args) or 0
    except NolabelError as e:
        print(f"nolabel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nolabel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
