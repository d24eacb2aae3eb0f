"""Score cluster assignments against ground-truth labels: ACC (Hungarian and majority mappings),
NMI, AMI, ARI, mutual information and purity.

Each FILE holds one integer id per sample, in the same sample order: a 1-D .npy array, or a
.csv/.txt file with one integer per line (an optional first line naming the column, such as
"cluster", is skipped). By default the cluster -> class mapping is fitted on the evaluated
predictions themselves; give --fit-pred and --fit-labels (e.g. the train split) to fit it there and
apply it to --pred (clusters never seen when fitting count as wrong).

--clustering DIR scores a clustering folder of any method (`nolabel cluster`, `scan`, `selflabel`,
a run's stages): every source it assigned that has labels, with the mapping fitted on the source
itself and, for eval sources, fitted on the train source.
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
    parser.add_argument("--pred", metavar="FILE", help="predicted cluster ids")
    parser.add_argument("--labels", metavar="FILE", help="true class ids")
    parser.add_argument("--clustering", metavar="DIR", help="a clustering folder to score (instead of --pred)")
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

    if args.clustering is not None:
        if args.pred or args.labels or args.fit_pred or args.fit_labels:
            raise NolabelError("--clustering scores a clustering folder; it goes without --pred, --labels, --fit-*")
        return _score_clustering(args)
    if args.pred is None or args.labels is None:
        raise NolabelError("give --pred and --labels (files of ids), or --clustering DIR")
    if (args.fit_pred is None) != (args.fit_labels is None):
        raise NolabelError("--fit-pred and --fit-labels go together; give both or neither")
    fit = None
    if args.fit_pred is not None:
        fit_pred = load_ids(args.fit_pred, "--fit-pred")
        fit = (load_ids(args.fit_labels, "--fit-labels"), fit_pred)  # (labels_true, labels_pred)
    result = evaluate(
        labels_pred=load_ids(args.pred, "--pred"),
        labels_true=load_ids(args.labels, "--labels"),
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


def _score_clustering(args: argparse.Namespace) -> int:
    from ..clustering import load_clustering
    from ..metrics import evaluate

    clustering = load_clustering(args.clustering)
    train = clustering.assignments["train"]
    fit = (train.label[train.label >= 0], train.cluster[train.label >= 0]) if train.has_labels else None
    results = {}
    for name, a in clustering.assignments.items():
        known = a.label >= 0
        if not known.any():
            continue
        kwargs = dict(method=args.mapping, average_method=args.average_method)
        results[name] = {"fit_on_eval": evaluate(a.label[known], a.cluster[known], **kwargs)}
        if name != "train" and fit is not None:
            results[name]["fit_on_train"] = evaluate(a.label[known], a.cluster[known], fit=fit, **kwargs)
    if not results:
        raise NolabelError(f"{args.clustering}: no source of this clustering has labels to score against")
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{clustering.method}: {clustering.n_clusters} clusters; ACC mapping: {args.mapping}")
    print(f"{'source':<20} {'mapping fitted on':<18} {'n':>8} {'ACC':>7} {'NMI':>7} {'AMI':>7} {'ARI':>7}")
    for name, entry in results.items():
        for protocol, scored in entry.items():
            where = "itself" if protocol == "fit_on_eval" else "train"
            print(f"{name:<20} {where:<18} {scored['n']:>8} {scored['acc']:7.4f} {scored['nmi']:7.4f} "
                  f"{scored['ami']:7.4f} {scored['ari']:7.4f}")
    return 0
