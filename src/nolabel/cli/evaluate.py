"""Score cluster assignments against ground-truth labels: ACC (Hungarian and majority mappings),
NMI, AMI, ARI, mutual information and purity.

Each FILE holds one integer id per sample, in the same sample order: a 1-D .npy array, or a
.csv/.txt file with one integer per line (an optional first line naming the column, such as
"cluster", is skipped). By default the cluster -> class mapping is fitted on the evaluated
predictions themselves; give --fit-pred and --fit-labels (e.g. the train split) to fit it there and
apply it to --pred (clusters never seen when fitting count as wrong).
"""
from __future__ import annotations

import argparse
import json

from ..errors import NolabelError

# (result key, label in the table)
_ROWS = (
    ("acc_hungarian", "ACC hungarian"),
    ("acc_majority", "ACC majority"),
    ("nmi", "NMI ({average_method})"),
    ("ami", "AMI ({average_method})"),
    ("ari", "ARI"),
    ("mi", "MI (nats)"),
    ("purity", "purity"),
    ("n", "samples"),
    ("n_clusters", "clusters"),
    ("n_classes", "classes"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, metavar="FILE", help="predicted cluster ids")
    parser.add_argument("--labels", required=True, metavar="FILE", help="true class ids")
    parser.add_argument("--fit-pred", metavar="FILE", help="cluster ids to fit the mapping on")
    parser.add_argument("--fit-labels", metavar="FILE", help="class ids to fit the mapping on")
    parser.add_argument(
        "--mapping", choices=("hungarian", "majority"), default="hungarian",
        help="cluster -> class mapping behind ACC (default: hungarian)",
    )
    parser.add_argument(
        "--average-method", choices=("arithmetic", "geometric", "min", "max"), default="arithmetic",
        help="entropy average normalising NMI and AMI (default: arithmetic)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from ..metrics import evaluate, load_ids

    if (args.fit_pred is None) != (args.fit_labels is None):
        raise NolabelError("--fit-pred and --fit-labels go together; give both or neither")
    fit = None
    if args.fit_pred is not None:
        fit = (load_ids(args.fit_pred, "--fit-pred"), load_ids(args.fit_labels, "--fit-labels"))
    result = evaluate(
        load_ids(args.pred, "--pred"),
        load_ids(args.labels, "--labels"),
        method=args.mapping,
        fit=fit,
        average_method=args.average_method,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    fitted_on = (
        "the evaluated predictions" if fit is None else f"--fit-pred ({result['n_fit']} samples)"
    )
    print(f"ACC mapping: {result['mapping']}, fitted on {fitted_on}")
    rows = [(label.format(**result), result[key]) for key, label in _ROWS]
    width = max(len(label) for label, _ in rows)
    print(f"{'metric':<{width}}  value")
    for label, value in rows:
        shown = f"{value:.6f}" if isinstance(value, float) else str(value)
        print(f"{label:<{width}}  {shown}")
    return 0
