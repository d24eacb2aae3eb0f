"""List the backbones nolabel can build and the published self-supervised weights it knows.

Architectures build with random weights unless they have default weights; a weight is named
`architecture.tag` (timm's convention) and loads from the cache, from --weights PATH, or - with
--download - from its URL. `nolabel models NAME` shows one entry in full, including how its file is
verified: against a published SHA-256, or against the SHA-256 pinned at its first download.
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
                           "cache file": record.cached_path() if record.package is None else "-",
                           "sha256": _hash_detail(record)})
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
    records = {r.name: r for r in PUBLISHED}
    print(f"\nPublished weights (cache: {cache_dir()}):")
    for i in weights:
        here = "here   " if i.weights_available else "absent "
        sha = _HASH_LABELS[records[i.name].hash_status()]
        print(f"  {i.name:<{width}}  D={i.feature_dim:<5} {i.input_size:>3}px  {here} {sha:<9} {i.layout:<8} "
              f"{i.description}")
    print("\nLoad one with --weights PATH (any layout, detected from its keys), or --download to fetch it.")
    print("SHA-256 of each file, checked before every load: published (prefix: only its first digits are "
          "published);\npinned (none published: pinned at the first download); unknown (none published, "
          "nothing pinned yet:\nthe first download, or the first load of a file put in the cache by hand, pins it).")
    return 0


_HASH_LABELS = {"published": "published", "published prefix": "prefix", "pinned": "pinned", "unknown": "unknown"}


def _hash_detail(record) -> str:
    from ..models.weights import pinned_sha256

    status = record.hash_status()
    if status == "published":
        text = f"published: {record.sha256}"
    elif status == "published prefix":
        text = f"published prefix ({len(record.sha256)} hex digits): {record.sha256}"
    elif status == "pinned":
        text = f"pinned at first download: {pinned_sha256(record)} ({record.pin_path()})"
    else:
        text = (f"unknown: none published; the first download (or first load of a file put in the cache by "
                f"hand) pins it in {record.pin_path()}")
    if record.md5 and status in ("pinned", "unknown"):
        kind = "MD5 prefix" if len(record.md5) < 32 else "MD5"
        text += f"; the publisher's {kind} {record.md5} is checked before pinning"
    return text
