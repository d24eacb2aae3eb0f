"""The report's figures, rendered with matplotlib (Agg) to PNG bytes.

Text drawn from data (class names) is passed with `parse_math=False`, so a `$` in a folder name
is shown as it is rather than read as mathtext.
"""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

INK = "#1f2937"
MUTED = "#6b7280"
ACCENT = "#2563eb"
GRID = "#e5e7eb"
DPI = 110
MAX_TICK_LABELS = 40
MAX_ANNOTATED_CELLS = 400
MAX_BARS = 100


def _figure(width: float, height: float):
    # A bare Figure draws with Agg on savefig and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.patch.set_facecolor("white")
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buffer.getvalue()


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(GRID)
    ax.tick_params(colors=MUTED, labelsize=8)
    ax.title.set_color(INK)


def confusion_heatmap(counts: np.ndarray, cluster_ids: Sequence[int], class_names: Sequence[str],
                      title: str) -> bytes:
    """counts: (K, C) images per (cluster, class), rows already in display order (by mapped class).

    Each row is coloured by the share of the cluster's labelled images in each class, so a pure
    cluster is one dark cell whatever its size; counts are written in the cells when they fit.
    """
    k, c = counts.shape
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    width = min(10.0, 1.8 + 0.34 * c) if c <= MAX_TICK_LABELS else 10.0
    height = min(8.0, 1.3 + 0.27 * k) if k <= MAX_TICK_LABELS else 8.0
    fig = _figure(max(width, 4.2), max(height, 3.0))
    ax = fig.add_subplot()
    image = ax.imshow(share, aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if c <= MAX_TICK_LABELS:
        ax.set_xticks(range(c), labels=[str(n) for n in class_names], rotation=45 if c > 6 else 0,
                      ha="right" if c > 6 else "center", parse_math=False)
    if k <= MAX_TICK_LABELS:
        ax.set_yticks(range(k), labels=[str(i) for i in cluster_ids])
    if k * c <= MAX_ANNOTATED_CELLS:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.55 else INK)
    ax.set_xlabel("class", color=MUTED, fontsize=9)
    ax.set_ylabel("cluster (ordered by mapped class)", color=MUTED, fontsize=9)
    ax.set_title(title, fontsize=10, loc="left", parse_math=False)
    _style(ax)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("share of the cluster", color=MUTED, fontsize=8)
    bar.ax.tick_params(labelsize=7, colors=MUTED)
    bar.outline.set_visible(False)
    return _png(fig)


def cluster_sizes(sizes: np.ndarray, purity: np.ndarray | None = None) -> bytes:
    """Left: every cluster's size, largest first (bars coloured by purity when labels exist), with
    the size of a perfectly balanced clustering; right: the histogram of sizes."""
    import matplotlib

    sizes = np.asarray(sizes)
    order = np.argsort(-sizes, kind="stable")
    fig = _figure(11.0, 2.8)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1], "wspace": 0.32})
    x = np.arange(len(sizes))
    colours = ACCENT
    if purity is not None:
        colours = matplotlib.colormaps["viridis"](np.nan_to_num(purity[order], nan=0.0))
        mappable = matplotlib.cm.ScalarMappable(cmap="viridis", norm=matplotlib.colors.Normalize(0, 1))
        bar = fig.colorbar(mappable, ax=left, fraction=0.03, pad=0.01)
        bar.set_label("purity", color=MUTED, fontsize=8)
        bar.ax.tick_params(labelsize=7, colors=MUTED)
        bar.outline.set_visible(False)
    if len(sizes) <= MAX_BARS:
        left.bar(x, sizes[order], width=0.8, color=colours, linewidth=0)
    else:  # one line per cluster: a thousand bar patches take seconds to draw, a line collection not
        left.vlines(x, 0, sizes[order], colors=colours, linewidth=max(0.3, 500 / len(sizes)))
    left.axhline(sizes.sum() / len(sizes), color=MUTED, linestyle="--", linewidth=1)
    left.text(len(sizes) - 0.5, sizes.sum() / len(sizes), " balanced", color=MUTED, fontsize=7, va="bottom",
              ha="right")
    left.set_xlim(-0.6, len(sizes) - 0.4)
    left.set_xticks([])
    left.set_xlabel(f"{len(sizes)} clusters, largest first", color=MUTED, fontsize=9)
    left.set_ylabel("images", color=MUTED, fontsize=9)
    span = int(sizes.max() - sizes.min())
    bins = np.arange(sizes.min(), sizes.max() + 2) - 0.5 if span < 30 else min(30, max(5, len(sizes) // 3))
    right.hist(sizes, bins=bins, color=ACCENT, linewidth=0, rwidth=0.9)
    right.set_xlabel("cluster size (images)", color=MUTED, fontsize=9)
    right.set_ylabel("clusters", color=MUTED, fontsize=9)
    for ax in (left, right):
        _style(ax)
        ax.grid(axis="y", color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
    return _png(fig)


def history_curves(history: Any, title: str) -> bytes | None:
    """Training curves from a history.json: a list of per-epoch dicts or a dict of per-epoch lists.

    One panel per numeric series (at most six), against "epoch" when the history has it; None when
    nothing in it is a curve.
    """
    series = _series(history)
    x = series.pop("epoch", None)
    if not series:
        return None
    names = sorted(series)[:6]
    fig = _figure(11.0, 2.4)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for ax, name in zip(axes, names):
        values = series[name]
        ax.plot(x if x is not None and len(x) == len(values) else np.arange(len(values)), values,
                color=ACCENT, linewidth=1.4, marker="o" if len(values) <= 30 else None, markersize=3)
        ax.set_title(name, fontsize=9, loc="left", parse_math=False)
        ax.set_xlabel("epoch" if x is not None else "step", color=MUTED, fontsize=8)
        ax.grid(color=GRID, linewidth=0.6)
        _style(ax)
    fig.suptitle(title, fontsize=10, x=0.01, ha="left", color=INK, parse_math=False)
    return _png(fig)


def _series(history: Any) -> dict[str, list[float]]:
    if isinstance(history, dict) and isinstance(history.get("history"), (list, dict)):
        history = history["history"]
    if isinstance(history, list) and all(isinstance(h, dict) for h in history):
        keys = {k for h in history for k in h}
        history = {k: [h.get(k) for h in history] for k in keys}
    if not isinstance(history, dict):
        return {}
    return {str(k): [float(v) for v in values] for k, values in history.items()
            if isinstance(values, list) and values
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)}


def scores_against_k(points: dict[str, list[tuple[int, float]]], score: str, chosen: tuple[str, int] | None) -> bytes:
    """A label-free score against the number of clusters, one line per feature space x method;
    the chosen candidate circled."""
    fig = _figure(6.4, 3.2)
    ax = fig.subplots()
    for name, values in sorted(points.items()):
        ks, ys = zip(*sorted(values))
        ax.plot(ks, ys, marker="o", markersize=4, linewidth=1.4, label=name)
        if chosen is not None and chosen[0] == name:
            y = dict(values)[chosen[1]]
            ax.plot([chosen[1]], [y], marker="o", markersize=12, markerfacecolor="none", markeredgecolor=INK,
                    linewidth=0)
    ax.set_xlabel("number of clusters", color=MUTED, fontsize=8)
    ax.set_ylabel(score.replace("_", " "), color=MUTED, fontsize=8)
    ax.grid(color=GRID, linewidth=0.6)
    ax.legend(fontsize=7, frameon=False)
    _style(ax)
    return _png(fig)
