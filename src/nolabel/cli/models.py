"""List the backbones nolabel can build and the published self-supervised weights it knows.

Architectures build with random weights unless they have default weights; a weight is named
`architecture.tag` (timm's convention) and loads from the cache, from --weights PATH, or - with
--download - from its URL. `nolabel models NAME` shows one entry in full.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="show this model or weight record in full")


def run(args: argparse.Namespace) -> int:
    from ..errors import NolabelError
    from ..models import PUBLISHED, cache_dir, list_models

    infos = list_models()
    if args.name:
        matches = [i for i in infos if i.name == args.name]
        if not matches:
            raise NolabelError(f"unknown model {args.name!r}; `nolabel models` lists them all")
        info = matches[0]
        record = next((r for r in PUBLISHED if r.name == info.name), None)
        fields = {
            "name": info.name, "architecture": info.architecture, "feature dim": info.feature_dim,
            "input size": info.input_size, "description": info.description,
            "weights from": info.weights or "random initialisation",
            "available here": {None: "-", True: "yes", False: "no"}[info.weights_available],
            "checkpoint layout": info.layout or "-",
        }
        if record is not None:
            p = record.preprocessing
            fields.update({"normalisation": f"mean {p.mean}, std {p.std}",
                           "eval transform": f"{p.interpolation} resize to {round(p.input_size / p.crop_fraction)}, "
                                             f"centre crop {p.input_size}",
                           "cache file": record.cached_path() if record.package is None else "-"})
            if record.note:
                fields["note"] = record.note
        for key, value in fields.items():
            print(f"{key:>17}: {value}")
        return 0

    architectures = [i for i in infos if i.name == i.architecture]
    weights = [i for i in infos if i.name != i.architecture]
    width = max(len(i.name) for i in infos)
    print("Architectures (random initialisation unless weights are listed):")
    for i in architectures:
        default = " [default weights: here]" if i.weights_available else ""
        print(f"  {i.name:<{width}}  D={i.feature_dim:<5} {i.input_size:>3}px  {i.description}{default}")
    print("  timm:NAME" + " " * max(width - 9, 0) + "  any timm model, classifier removed, no download")
    print(f"\nPublished weights (cache: {cache_dir()}):")
    for i in weights:
        here = "here   " if i.weights_available else "absent "
        print(f"  {i.name:<{width}}  D={i.feature_dim:<5} {i.input_size:>3}px  {here} {i.layout:<8} {i.description}")
    print("\nLoad one with --weights PATH (any layout, detected from its keys), or --download to fetch it.")
    return 0
