"""Train a backbone from scratch with a self-supervised pretext task (SimCLR), resumable.

Writes DIR/backbone.pt (loads with `nolabel extract --model NAME --weights DIR/backbone.pt`),
DIR/state.pt (resume: run the same command again) and DIR/history.json (loss, kNN monitor per epoch).
Under torchrun every process trains on its share of each batch (DistributedDataParallel).
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", choices=["simclr"], help="pretext method")
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec (see `nolabel datasets`)")
    p.add_argument("--model", default="cnn28", metavar="NAME", help="architecture to train (default cnn28)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.5, help="SGD learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature")
    p.add_argument("--image-size", type=int, metavar="S", help="training resolution (default: the model's)")
    p.add_argument("--crop-min", type=float, default=0.2, help="smallest random-resized-crop area fraction")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16 support)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where training runs (auto: a GPU when one is visible)")
    p.add_argument("--random-state", "--seed", type=int, default=0)
    p.add_argument("--force", action="store_true",
                   help="replace a training in DIR made from other images or settings (the same ones resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..pretrain import SimCLRConfig, pretrain_simclr

    distributed.init()
    config = SimCLRConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, temperature=args.temperature, image_size=args.image_size,
                          crop_scale=(args.crop_min, 1.0), bf16=args.bf16, random_state=args.random_state,
                          device=args.device)
    result = pretrain_simclr(args.data, args.out, config, force=args.force, show_progress=not args.quiet)
    if distributed.is_main():
        last = result.history[-1] if result.history else {}
        knn = f", kNN accuracy {last['knn_acc']:.4f}" if last.get("knn_acc") is not None else ""
        loss = last.get("loss", float("nan"))
        print(f"{result.checkpoint}: {args.model} after {last.get('epoch', 0)} epochs, loss {loss:.4f}{knn}")
    return 0
