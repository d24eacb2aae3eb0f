"""Train a backbone from scratch with DeepCluster (v1, Caron et al. 2018) or DeepCluster-v2.

Each epoch clusters the network's features with k-means and trains it to predict the clusters.
Writes DIR/backbone.pt (load it with `nolabel extract --model NAME --weights DIR/backbone.pt`),
state.pt (a killed run resumes when started again with the same --out), history.json (per epoch:
loss, NMI between consecutive epochs' assignments, and ACC/NMI/ARI against labels when known) and
assignments.npy. When the dataset has labels, the trained backbone is then evaluated: its features,
whitened PCA, L2 and k-means with --eval-k clusters (default: the number of classes), written to
DIR/evaluation.json.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="SPEC", help="dataset spec (see `nolabel datasets`)")
    p.add_argument("--model", default="cnn28", metavar="NAME",
                   help="architecture trained from scratch (default cnn28; alexnet_sobel / vgg16_sobel carry "
                        "v1's Sobel input filter)")
    p.add_argument("--version", choices=["v1", "v2"], default="v1")
    p.add_argument("--n-clusters", "--k", type=int, required=True, help="clusters (v1) or prototypes per head (v2)")
    p.add_argument("--heads", type=int, default=3, help="v2: clustering heads (default 3)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--epoch-size", type=int, metavar="N", help="images trained on per epoch (default: all)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="cosine")
    p.add_argument("--pca-dim", type=int, default=256, metavar="N", help="v1: PCA components, at most the feature dim")
    p.add_argument("--kmeans-iter", type=int, metavar="N", help="k-means iterations (default 20 for v1, 10 for v2)")
    p.add_argument("--temperature", type=float, default=0.1, help="v2: prototype softmax temperature")
    p.add_argument("--crop-scale", type=float, nargs=2, default=(0.2, 1.0), metavar=("MIN", "MAX"))
    p.add_argument("--image-size", type=int, metavar="S", help="training resolution (default: the model's)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with bf16 units)")
    p.add_argument("--random-state", "--seed", type=int, default=0)
    p.add_argument("--eval-k", type=int, metavar="K",
                   help="clusters of the final evaluation (default: the number of classes; 0: skip it)")
    p.add_argument("--force", action="store_true",
                   help="replace a training in DIR made from other images or settings (the same ones resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import distributed
    from ..data import load
    from ..io import write_json
    from ..models import list_models
    from ..pretrain.deepcluster import DeepClusterConfig, evaluate_backbone, train_deepcluster
    from ..training import images_in_memory

    config = DeepClusterConfig(
        version=args.version, model=args.model, n_clusters=args.n_clusters, heads=args.heads, epochs=args.epochs,
        epoch_size=args.epoch_size, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
        pca_dim=args.pca_dim, kmeans_iter=args.kmeans_iter, temperature=args.temperature,
        crop_scale=tuple(args.crop_scale), image_size=args.image_size, bf16=args.bf16, random_state=args.random_state)
    config.resolved()  # refuse bad values before loading anything
    dataset = load(args.data)
    input_size = next((m.input_size for m in list_models() if m.name == args.model), None)
    images = images_in_memory(dataset, args.image_size or input_size)
    labels = np.asarray(dataset.labels)
    has_labels = bool((labels >= 0).any())
    result = train_deepcluster(images, args.out, config, labels=labels if has_labels else None,
                               show_progress=not args.quiet, force=args.force)
    eval_k = len(dataset.classes) if args.eval_k is None and has_labels else args.eval_k
    if has_labels and eval_k:
        _, metrics = evaluate_backbone(result.backbone, images, labels, eval_k, pca_dim=config.pca_dim,
                                       seed=args.random_state, image_size=args.image_size, bf16=args.bf16)
        if distributed.is_main():
            write_json(f"{args.out}/evaluation.json", {"k": eval_k, **metrics})
            print(f"evaluation (k-means K={eval_k} on the trained features): acc {metrics['acc']:.4f}, "
                  f"nmi {metrics['nmi']:.4f}, ami {metrics['ami']:.4f}, ari {metrics['ari']:.4f}")
    if distributed.is_main():
        print(f"{result.checkpoint}: {len(result.history)} epochs, {result.seconds:.0f} s")
    return 0
