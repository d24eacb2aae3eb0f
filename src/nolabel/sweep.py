"""Ablations of the features -> PCA -> k-means method over PCA dimensions, cluster counts and seeds.

The two figures of Zheltonozhskii et al. (ACC and ARI against the PCA dimension; ACC and ARI
against the number of clusters), for any feature store, mean +- std over seeds.

PCA is fitted once, at the largest dimension asked for: principal components are nested (the top
d components of a fit are the first d rows of a larger fit), so every smaller dimension is a
column slice of one projection. Whitening is a per-column scale, so it slices too; L2
normalisation is applied after slicing. Each finished (dimension, k, seed) row is appended to
sweep.csv at once, so a killed sweep resumes at the first missing row.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import metrics, record
from .cluster import KMeans, PCA
from .errors import NolabelError
from .io import atomic_path, write_json
from .store import source_names
from .store import FeatureStore

COLUMNS = ["pca", "k", "seed", "source", "protocol", "acc", "nmi", "ari", "ami", "inertia"]


def sweep(
    train: FeatureStore,
    evals: Sequence[FeatureStore],
    out: str | os.PathLike,
    *,
    pca_dims: Sequence[int],
    ks: Sequence[int],
    seeds: int = 3,
    max_iter: int = 20,
    whiten: bool = False,
    l2_normalize: bool = False,
    spherical: bool = False,
    mapping: str = "hungarian",
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Run every (PCA dim, k, seed) and write out/sweep.csv and the four plots; return the csv path.

    A row is keyed by (PCA dim, k, seed) within the folder's record, which holds everything else that
    changes a row: the feature stores (by fingerprint) and the settings below. A rerun with the same
    record computes only missing rows (a larger grid adds rows); other features or settings are
    refused unless `force`, which starts the sweep over."""
    out = Path(out)
    pca_dims, ks = sorted(set(pca_dims)), sorted(set(ks))
    if not pca_dims or not ks or seeds < 1:
        raise NolabelError("a sweep needs at least one PCA dimension, one k and one seed")
    if pca_dims[-1] > min(train.n, train.dim):
        raise NolabelError(f"PCA dimension {pca_dims[-1]} exceeds min(N, D) = {min(train.n, train.dim)}")
    if ks[-1] > train.n:
        raise NolabelError(f"k = {ks[-1]} exceeds the {train.n} train rows")
    if not train.has_labels:
        raise NolabelError(f"{train.path}: a sweep scores clusters against labels, and this store has none")
    csv_path = out / "sweep.csv"
    names = source_names([train, *evals])
    inputs = {"features": {name: store.fingerprint for name, store in zip(names, [train, *evals])},
              "max_iter": max_iter, "whiten": whiten, "l2_normalize": l2_normalize, "spherical": spherical,
              "mapping": mapping}
    if record.begin(out, "sweep", inputs, force=force, what="a sweep") is record.START:
        csv_path.unlink(missing_ok=True)  # rows of other features or settings
    done = _done_rows(csv_path)

    pca = PCA(n_components=pca_dims[-1], whiten=whiten).fit(train.features)
    projected = {name: pca.transform(store.features) for name, store in zip(names, [train, *evals])}
    stores = dict(zip(names, [train, *evals]))
    train_labels = train.labels

    for dim in pca_dims:
        for k in ks:
            for seed in range(seeds):
                if (dim, k, seed) in done:
                    continue
                x = _slice(projected["train"], dim, l2_normalize)
                model = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, spherical=spherical, random_state=seed,
                               verbose=False)
                train_pred = model.fit_predict(x)
                rows = []
                for name, features in projected.items():
                    pred = train_pred if name == "train" else model.predict(_slice(features, dim, l2_normalize))
                    labels = stores[name].labels
                    known = labels >= 0
                    if not known.any():
                        continue
                    fits = {"fit_on_eval": None}
                    if name != "train":
                        fits["fit_on_train"] = (train_labels[train_labels >= 0], train_pred[train_labels >= 0])
                    for protocol, fit in fits.items():
                        m = metrics.evaluate(labels[known], pred[known], method=mapping, fit=fit)
                        rows.append([dim, k, seed, name, protocol, m["acc"], m["nmi"], m["ari"], m["ami"],
                                     float(model.inertia_)])
                _append(csv_path, rows)
                if progress:
                    print(f"pca={dim} k={k} seed={seed}: " + ", ".join(
                        f"{r[3]}/{r[4]} acc={r[5]:.4f}" for r in rows), flush=True)
    plot_sweep(csv_path, out)
    write_json(out / "sweep.json", {"train": str(train.path), "evals": [str(s.path) for s in evals],
                                    "pca": pca_dims, "k": ks, "seeds": seeds, "max_iter": max_iter,
                                    "whiten": whiten, "l2_normalize": l2_normalize, "spherical": spherical,
                                    "mapping": mapping})
    record.finish(out, "sweep", inputs)
    return csv_path



def _slice(x: np.ndarray, dim: int, l2_normalize: bool) -> np.ndarray:
    x = np.ascontiguousarray(x[:, :dim])
    if l2_normalize:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _done_rows(csv_path: Path) -> set[tuple[int, int, int]]:
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="") as f:
        return {(int(r["pca"]), int(r["k"]), int(r["seed"])) for r in csv.DictReader(f)}


def _append(csv_path: Path, rows: list[list]) -> None:
    """Rewrite the csv with the new rows added: a kill never leaves half a row behind."""
    old = csv_path.read_text() if csv_path.exists() else ",".join(COLUMNS) + "\n"
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(old)
            csv.writer(f).writerows(rows)


def plot_sweep(csv_path: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """ACC and ARI against PCA dimension (one line per k) and against k (one line per dimension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    # The headline curve: the first eval set under the train-fitted protocol, else train itself.
    sources = [(r["source"], r["protocol"]) for r in rows]
    target = next((s for s in sources if s[1] == "fit_on_train"), ("train", "fit_on_eval"))
    rows = [r for r in rows if (r["source"], r["protocol"]) == target]
    written = []
    for metric in ("acc", "ari"):
        for x_key, line_key, xlabel in (("pca", "k", "PCA dimension"), ("k", "pca", "number of clusters")):
            fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
            for line in sorted({int(r[line_key]) for r in rows}):
                xs = sorted({int(r[x_key]) for r in rows if int(r[line_key]) == line})
                vals = [[float(r[metric]) for r in rows if int(r[line_key]) == line and int(r[x_key]) == x]
                        for x in xs]
                mean, std = np.array([np.mean(v) for v in vals]), np.array([np.std(v) for v in vals])
                ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, label=f"{line_key} = {line}")
            if x_key == "pca":
                ax.set_xscale("log", base=2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric.upper())
            ax.set_title(f"{metric.upper()} vs {xlabel} ({target[0]}, {target[1].replace('_', ' ')})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = Path(out) / f"sweep_{metric}_vs_{x_key}.png"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png")
            plt.close(fig)
            written.append(path)
    return written
