"""The HTML report of a run: one page a person can open and judge the clusters from in a minute.

    >>> write_report("runs/default")            # -> runs/default/report.html

It shows what was run (data, model, weights, settings, time per stage), the metrics table with the
protocol named, a clusters x classes heatmap, the cluster sizes, a 2-D map of the images (UMAP of the
clustered features, `embedding.py`; hovering shows an image, clicking opens its cluster), and a cluster
browser: for every cluster a montage of its most typical images (closest to the centroid), its least
typical and a few random ones, its size, and - where labels exist - the class it maps to and its
purity (`nolabel.clustering.outliers`' ordering); the run's most uncertain images (`outliers`); and,
on clicking any image, its most similar images (`nolabel.similar.SimilarityIndex`, as `nolabel
similar` finds them; precomputed for the images shown). Sweep plots (any PNG in the
run folder) and training curves (any history.json) follow.

The page is one file with everything inline. The cluster browser is drawn by a small inline script
a page of clusters at a time, so 1000 clusters open as fast as 50; when the montages together would
exceed `max_embedded_bytes`, they go to a `<report>_files/` folder beside the page instead of being
embedded, and the browser loads only the current page's. The map's embedding is cached in
`<report>_map/` beside the page (with its record), so writing the report again does not recompute it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

from ..errors import NolabelError
from ..io import read_json, write_text
from .collect import ClusterResult, RunFolder, SourceAssignments, read_run
from .embedding import MAP_POINTS
from .montage import SHEET_COLUMNS, Sprite, Thumbnails, image_reader, pick_members, render_sprite, tile_size
from .page import GENERATOR, Figure, MetricsTable, Page, Selection, data_uri, render

__all__ = ["write_report"]

REPORT_NAME = "report.html"
MAX_FOUND_PLOTS = 24
MAX_PLOT_BYTES = 4 << 20
THUMBNAILS_MARKER = ".nolabel-report"  # marks a thumbnails folder as the report's own
SHEET_THUMB_PX = 40  # largest side of the map's and the similar-images panel's thumbnails


def write_report(
    run_dir: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    source: str = "train",
    n_typical: int = 8,
    n_random: int = 4,
    n_atypical: int = 4,
    n_uncertain: int = 24,
    n_similar: int = 8,
    map_points: int = MAP_POINTS,
    thumb_px: int = 64,
    page_size: int = 50,
    max_embedded_bytes: int = 8 << 20,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write the report of `run_dir` (a run folder or a clustering folder) and return its path.

    The headline and the cluster browser show the run's primary clustering (its last clustering
    stage, e.g. self-labeling after SCAN); the browser's selector switches to every other clustering
    of the run. out: the HTML file (default RUN_DIR/report.html). An earlier nolabel report there is
    replaced; any other file is refused unless `force`. source: whose images the cluster browser
    shows ("train", or an eval source's name). n_typical / n_atypical / n_random: images per cluster
    montage (most typical, least typical, random). n_uncertain: the clustering's least confident images
    listed. n_similar: nearest images precomputed for every image shown (0: none). map_points: images
    on the 2-D map of the primary clustering's train images (a seeded random sample beyond; 0: no map).
    thumb_px: largest thumbnail side in pixels. page_size: clusters per page of the browser.
    """
    for name, value, low in (("n_typical", n_typical, 0), ("n_random", n_random, 0), ("n_atypical", n_atypical, 0),
                             ("n_uncertain", n_uncertain, 0), ("n_similar", n_similar, 0),
                             ("map_points", map_points, 0), ("thumb_px", thumb_px, 8),
                             ("page_size", page_size, 1), ("max_embedded_bytes", max_embedded_bytes, 0)):
        if not isinstance(value, int) or value < low:
            raise NolabelError(f"{name} must be an integer >= {low}, got {value!r}")
    run = read_run(run_dir)
    out = Path(out) if out is not None else run.path / REPORT_NAME
    _refuse_foreign(out, force)
    main = run.main
    if source not in main.assignments:
        raise NolabelError(f"{main.path}: no source {source!r} in assignments.csv; "
                           f"choose one of {', '.join(main.sources)}")

    warnings: list[str] = []
    readers = _Readers(warnings)
    thumbnails = Thumbnails()
    map_data, map_note = _map(run, out.with_name(f"{out.stem}_map"), map_points, seed, readers, thumbnails)
    counts = {"typical": n_typical, "atypical": n_atypical, "random": n_random, "uncertain": n_uncertain,
              "similar": n_similar}
    browsers, sprites = [], {}
    for index, result in enumerate(run.results):
        shown = source if source in result.assignments else "train"
        browser, found = _cluster_browser(result, shown, counts, thumb_px, seed, progress, readers, thumbnails)
        browsers.append({"name": result.method, "note": _browser_note(result, shown, counts, page_size,
                                                                       len(browser["clusters"])), **browser})
        sprites.update({(index, cluster): sprite for cluster, sprite in found.items()})
    sheets = thumbnails.render(min(thumb_px, SHEET_THUMB_PX), progress)
    files_dir = out.with_name(f"{out.stem}_files")
    files = {_sprite_name(index, cluster, sprite): sprite for (index, cluster), sprite in sprites.items()}
    files.update({f"thumbnails-{i:04d}.webp": sheet for i, sheet in enumerate(sheets)})
    embed = sum(len(s.data) for s in files.values()) <= max_embedded_bytes

    def url(name: str) -> str:
        return data_uri(files[name].data, files[name].mime) if embed else f"{quote(files_dir.name)}/{quote(name)}"

    for index, browser in enumerate(browsers):
        for c in browser["clusters"]:
            sprite = sprites.get((index, c["id"]))
            c["sprite"] = None if sprite is None else url(_sprite_name(index, c["id"], sprite))

    page = Page(
        title=run.name,
        subtitle=f"{run.path.resolve()} · generated {time.strftime('%Y-%m-%d %H:%M')}",
        headline=_headline(main, source),
        run_cards=_run_cards(run),
        metrics=_metrics_table(run),
        metrics_missing="No labels: the clusters cannot be scored against classes. Browse them below."
        + (" The clustering shown was chosen without labels (above)." if run.summary and "selected" in run.summary
           else ""),
        selection=_selection(run),
        heatmaps=[figure for index, result in enumerate(run.results) for figure in _heatmaps(result, index)],
        sizes=[_sizes_figure(result, source if source in result.assignments else "train", index)
               for index, result in enumerate(run.results)],
        clusters={"clusterings": browsers, "primary": run.primary, "page_size": page_size, "map": map_data,
                  "thumbs": {"sheets": [url(f"thumbnails-{i:04d}.webp") for i in range(len(sheets))],
                             "tile_px": [sheet.tile_px for sheet in sheets], "columns": SHEET_COLUMNS}},
        map_note=map_note,
        warnings=warnings,
        figures=_found_figures(run.path),
        details=_details(run),
        footer=f"Made by {GENERATOR} from {run.path.resolve()}.",
    )
    html = render(page)
    if not embed:
        _write_files(files_dir, files)
    elif files_dir.is_dir() and (files_dir / THUMBNAILS_MARKER).exists():
        shutil.rmtree(files_dir)  # an earlier report's thumbnails, no longer referenced
    write_text(out, html)
    return out


def _refuse_foreign(out: Path, force: bool) -> None:
    if out.exists() and not force:
        with open(out, encoding="utf-8", errors="replace") as f:
            head = f.read(2048)
        if f'content="{GENERATOR}"' not in head:
            raise NolabelError(f"{out} exists and is not a nolabel report; choose another --out or pass --force")


def _sprite_name(clustering: int, cluster: int, sprite: Sprite) -> str:
    return f"clustering-{clustering}-cluster-{cluster:05d}.{'png' if sprite.mime == 'image/png' else 'jpg'}"


def _write_files(files_dir: Path, files: dict[str, Sprite]) -> None:
    """Write the thumbnails into a fresh folder, then swap it in for any earlier one."""
    files_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{files_dir.name}.", dir=files_dir.parent))
    (staging / THUMBNAILS_MARKER).write_text("thumbnails of the report beside this folder\n", encoding="utf-8")
    for name, sprite in files.items():
        (staging / name).write_bytes(sprite.data)
    if files_dir.exists():
        if not (files_dir / THUMBNAILS_MARKER).exists():
            shutil.rmtree(staging)
            raise NolabelError(f"{files_dir} exists and was not made by a nolabel report; move it away")
        shutil.rmtree(files_dir)
    os.replace(staging, files_dir)


# ---- what was run ---------------------------------------------------------------------------------

def _headline(main: ClusterResult, source: str) -> list[tuple[str, str]]:
    a = main.assignments[source]
    items = [("images", f"{len(a.cluster):,}"), ("clusters", f"{main.clustering.n_clusters:,}")]
    scored = main.metrics.get(source, {}).get("fit_on_eval")
    if scored:
        items += [(name.upper(), f"{scored[name]:.3f}") for name in ("acc", "nmi", "ari") if name in scored]
    else:
        items.append(("labels", "none"))
    return items


def _run_cards(run: RunFolder) -> list[tuple[str, list[tuple[str, str]]]]:
    cards = [("Data", _data_card(run.main)), ("Features", _features_card(run.main)),
             ("Clustering", _clustering_card(run)), ("Time", _time_card(run))]
    return [(title, items) for title, items in cards if items]


def _data_card(main: ClusterResult) -> list[tuple[str, str]]:
    items = []
    for source in main.sources:
        store = main.clustering.store(source)
        classes = main.clustering.classes(source)
        described = f", {len(classes)} classes" if classes else ", unlabelled"
        if store is not None and store.manifest.get("n_skipped"):
            described += f", {store.manifest['n_skipped']} unreadable skipped"
        items.append((source, f"{main.clustering.dataset(source)} · {len(main.assignments[source].cluster):,} "
                              f"images{described}"))
    return items


def _features_card(main: ClusterResult) -> list[tuple[str, str]]:
    stores = next((found for found in map(main.clustering.stores, main.sources) if found), None)
    if stores is None:
        return []
    if len(stores) > 1:  # TURTLE's backbones
        return [("models", " + ".join(str(store.manifest.get("model", "?")) for store in stores)),
                ("features", " + ".join(str(store.dim) for store in stores) + " dims")]
    first = stores[0]
    m = first.manifest
    items = [("model", str(m.get("model", "?"))), ("weights", str(m.get("weights") or "none recorded"))]
    if m.get("weights_sha256"):
        items.append(("sha256", str(m["weights_sha256"])[:16] + "…"))
    if m.get("transform"):
        items.append(("transform", _describe(m["transform"])))
    precision = f", {m['precision']} compute" if m.get("precision") else ""
    items.append(("features", f"{first.dim} dims, {m.get('dtype', '?')}{precision}"))
    if m.get("seconds") is not None:
        speed = f" ({m['images_per_second']:,.0f} images/s)" if m.get("images_per_second") else ""
        items.append(("extraction", f"{_duration(m['seconds'])}{speed}"))
    return items


def _clustering_card(run: RunFolder) -> list[tuple[str, str]]:
    main = run.main
    items = [("shown", main.method)]
    if len(run.results) > 1:
        items.append(("also in this run", "; ".join(r.method for r in run.results if r is not main)))
    items.append(("clusters", f"{main.clustering.n_clusters:,}"))
    settings, fitted = main.settings, main.fitted
    pca, kmeans = settings.get("pca", {}), settings.get("kmeans", {})
    if pca and not pca.get("enabled", True):
        items.append(("PCA", "off"))
    elif pca:
        text = f"{fitted.get('pca_components', pca.get('n_components'))} components"
        text += "".join(f", {name}" for name, on in (("whitened", pca.get("whiten")),
                                                     ("L2-normalised", pca.get("l2_normalize"))) if on)
        if fitted.get("explained_variance") is not None:
            text += f"; {100 * fitted['explained_variance']:.1f}% of variance"
        items.append(("PCA", text))
    if kmeans:
        spherical = "spherical, " if kmeans.get("spherical") else ""
        items.append(("k-means", f"{spherical}{kmeans.get('n_init')} init, ≤ {kmeans.get('max_iter')} iterations, "
                                 f"random_state {kmeans.get('random_state')}"))
    if "inertia" in fitted:
        items.append(("converged", f"inertia {fitted['inertia']:.6g} after {fitted.get('n_iter')} iterations"))
    training = settings.get("training", {}).get("config", {})
    if training:
        items.append(("training", ", ".join(f"{k} {v}" for k, v in training.items()
                                            if k in ("n_heads", "epochs", "lr", "entropy_weight", "threshold",
                                                     "n_neighbors", "batch_size"))))
    for key in ("best_head", "neighbor_purity", "confident_fraction_end"):
        if fitted.get(key) is not None:
            value = fitted[key]
            items.append((key.replace("_", " "), f"{value:.3f}" if isinstance(value, float) else str(value)))
    items.append(("evaluation", f"{main.mapping} mapping, NMI/AMI "
                                f"{main.info.get('evaluate', {}).get('average_method', 'arithmetic')}"))
    return items


def _time_card(run: RunFolder) -> list[tuple[str, str]]:
    items = [(stage, _duration(seconds)) for stage, seconds in run.timings.items()]
    if run.summary is not None:  # the run's stages, then the shown clustering's own breakdown
        items += [(f"clustering: {stage.replace('_', ' ')}", _duration(s))
                  for stage, s in run.main.info.get("timings_seconds", {}).items()]
        items.append(("total", _duration(sum(run.timings.values()))))
    return items


def _describe(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_describe(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _details(run: RunFolder) -> list[tuple[str, str]]:
    import json

    details = []
    if run.config_text:
        details.append(("config.yaml", run.config_text))
    for result in run.results:
        details.append((f"{result.method}: settings ({result.path.name}/clustering.json)",
                        json.dumps(result.settings, indent=2)))
    versions = run.main.info.get("versions")
    if versions:
        details.append(("versions", "\n".join(f"{k} {v}" for k, v in versions.items())))
    return details


# ---- the label-free choice ----------------------------------------------------------------------

def _selection(run: RunFolder) -> Selection | None:
    """Every candidate with its label-free scores (means over the candidate feature spaces) and, kept
    apart, its label metrics where labels exist; the chosen one marked, and why."""
    selected = (run.summary or {}).get("selected")
    if not selected:
        return None
    from .plots import scores_against_k

    candidates = [row for row in run.summary["rows"] if row.get("label_free")]
    criterion, k_criterion = selected["criterion"], selected.get("k_criterion")
    scores = [criterion] + [name for name in candidates[0]["label_free"] if name != criterion]
    labelled = any(row["sources"][0].get("metrics") for row in candidates)
    header = ["candidate", "K"] + [name.replace("_", " ") for name in scores] + (
        ["ACC (labels, not used)", "AMI (labels, not used)"] if labelled else [])
    rows = []
    for row in candidates:
        metrics = row["sources"][0].get("metrics") or {}
        rows.append([row["method"], row["n_clusters"]] + [row["label_free"].get(name) for name in scores]
                    + ([metrics.get("acc"), metrics.get("ami")] if labelled else []))
    chosen = next(i for i, row in enumerate(candidates) if row["method"] == selected["method"])
    note = (f"{len(candidates)} candidate clusterings (feature space x number of clusters x method) were each "
            f"scored without labels in every candidate feature space, and the scores averaged over the spaces "
            f"(a clustering scored only in its own space always looks best). "
            + (f"K = {selected['n_clusters']} chosen by {k_criterion.replace('_', ' ')}, then among the candidates "
               f"of that K c" if k_criterion else "C")
            + f"hosen by {criterion.replace('_', ' ')}: {selected['method']} ({selected['score']:.3f}).")
    if labelled:
        note += " The label columns are shown for reference only: labels never influence the choice."
    by_k = k_criterion or criterion  # the score that chose K
    points: dict[str, list[tuple[int, float]]] = {}
    for row in candidates:  # one line per space x method
        points.setdefault(row["family"], []).append((row["n_clusters"], row["label_free"][by_k]))
    figures = []
    if any(len(v) > 1 for v in points.values()):
        chosen_row = candidates[chosen]
        figures.append(Figure(scores_against_k(points, by_k, (chosen_row["family"], chosen_row["n_clusters"])),
                              f"{by_k.replace('_', ' ')} against the number of clusters; circled: the choice",
                              "label-free score against the number of clusters", wide=True))
    return Selection(header, rows, chosen, note, figures)


# ---- metrics --------------------------------------------------------------------------------------

def _metrics_table(run: RunFolder) -> MetricsTable | None:
    header = ["method", "data", "source", "n labelled", "ACC fit on eval", "ACC fit on train", "NMI", "AMI",
              "ARI", "purity"]
    rows, protocol = [], None
    for result in run.results:
        for source, entry in ((k, v) for k, v in result.metrics.items() if not k.startswith("_")):
            spec = result.clustering.dataset(source)
            on_eval, on_train = entry.get("fit_on_eval"), entry.get("fit_on_train")
            if on_eval:
                protocol = protocol or on_eval
                rows.append([result.method, spec, source, f"{entry['n_labelled']:,}", on_eval.get("acc"),
                             on_train.get("acc") if on_train else None, on_eval.get("nmi"), on_eval.get("ami"),
                             on_eval.get("ari"), on_eval.get("purity")])
            elif "objectnet" in entry:
                o = entry["objectnet"]
                rows.append([result.method, f"{spec} (ObjectNet classes with an ImageNet counterpart)", source,
                             f"{o['n_scored']:,}", None, o["accuracy_overlapping_classes"], None, None, None, None])
    if not rows:
        return None
    mapping = protocol.get("mapping", "hungarian") if protocol else "hungarian"
    average = protocol.get("average_method", "arithmetic") if protocol else "arithmetic"
    how = ("one-to-one (Hungarian matching of clusters to classes; clusters left over take their majority class)"
           if mapping == "hungarian" else "many-to-one (every cluster takes its majority class)")
    note = (f"ACC maps each cluster to a class, {how}. \"Fit on eval\": the mapping is fitted on the evaluated "
            "set itself (SCAN's protocol). \"Fit on train\": it is fitted on the train set's clusters and applied "
            "to this set, so the mapping uses no label of this set (the unsupervised protocol of Zheltonozhskii et al. "
            f"2020); on the train set the two coincide. NMI and AMI use the {average} mean; NMI, AMI, ARI and "
            "purity need no mapping." + (" Bold: the best method on each source." if len(run.results) > 1 else ""))
    return MetricsTable(header, rows, note)


def _class_names(result: ClusterResult, source: str) -> list[str]:
    return [str(n) for n in result.classes(source)]


def _contingency(a: SourceAssignments, k: int, n_classes: int) -> np.ndarray:
    """(k, n_classes) counts of labelled images per (cluster, class)."""
    known = a.label >= 0
    counts = np.zeros((k, n_classes), np.int64)
    np.add.at(counts, (a.cluster[known], a.label[known]), 1)
    return counts


def _mapped_classes(a: SourceAssignments, method: str) -> dict[int, int]:
    """cluster -> class, the mapping of the metrics fitted on this source's labelled images."""
    from .. import metrics

    known = a.label >= 0
    return metrics.contingency(a.label[known], a.cluster[known]).mapping(method).as_dict()


def _heatmaps(result: ClusterResult, index: int) -> list[Figure]:
    from .plots import confusion_heatmap

    figures = []
    for source, a in result.assignments.items():
        if not a.has_labels:
            continue
        names = _class_names(result, source)
        k = max(int(a.cluster.max()) + 1, result.clustering.n_clusters)
        counts = _contingency(a, k, len(names))
        mapped = _mapped_classes(a, result.mapping)
        rows = sorted(mapped, key=lambda c: (mapped[c], -counts[c].sum(), c))
        columns = np.flatnonzero(counts.sum(axis=0))
        title = f"{result.method} · {source} · {result.clustering.dataset(source)}"
        png = confusion_heatmap(counts[np.ix_(rows, columns)], rows, [names[j] for j in columns], title)
        figures.append(Figure(png, f"{result.method}, {source}: {len(rows)} clusters × {len(columns)} classes, "
                                   f"{int(counts.sum()):,} labelled images, {result.mapping} mapping fitted on "
                                   f"{source}", f"confusion heatmap of {source}", clustering=index))
    return figures


def _sizes_figure(result: ClusterResult, source: str, index: int) -> Figure:
    from .plots import cluster_sizes

    a = result.assignments[source]
    k = max(int(a.cluster.max()) + 1, result.clustering.n_clusters)
    sizes = np.bincount(a.cluster, minlength=k)
    purity = None
    if a.has_labels:
        counts = _contingency(a, k, int(a.label.max()) + 1)
        labelled = counts.sum(axis=1)
        purity = np.where(labelled > 0, counts.max(axis=1) / np.maximum(labelled, 1), np.nan)
    empty = int((sizes == 0).sum())
    caption = (f"{result.method}, {source}: {len(a.cluster):,} images in {k:,} clusters; sizes "
               f"{sizes.min():,}–{sizes.max():,}, median {int(np.median(sizes)):,}"
               + (f"; {empty} empty" if empty else ""))
    return Figure(cluster_sizes(sizes, purity), caption, f"cluster sizes of {source}", wide=True, clustering=index)


# ---- cluster browser ------------------------------------------------------------------------------

class _Readers:
    """One image reader per dataset, loaded on first use; a dataset that cannot be loaded is warned
    about once and read as None."""

    def __init__(self, warnings: list[str]):
        self.warnings = warnings
        self.found: dict[str, tuple] = {}

    def __call__(self, result: ClusterResult, source: str):
        """(row -> image, None) for `source`'s images, or (None, why not)."""
        spec = result.clustering.dataset(source)
        if spec not in self.found:
            try:
                self.found[spec] = (image_reader(spec, result.assignments[source].items), None)
            except NolabelError as e:
                self.found[spec] = (None, f"no images: the dataset could not be loaded ({e})")
                self.warnings.append(f"Montages left out: the dataset of {source} could not be loaded "
                                     f"({result.method}): {e}")
        return self.found[spec]


def _map(run: RunFolder, cache_dir: Path, map_points: int, seed: int, readers: _Readers,
         thumbnails: Thumbnails) -> tuple[dict | None, str | None]:
    """The map's JSON for the page's script (None without a map) and its caption or why there is none."""
    from .embedding import embed_map

    if map_points == 0:
        return None, None
    main = run.main
    try:
        found = embed_map(main.clustering, "train", cache_dir, max_points=map_points, seed=seed)
    except NolabelError as e:
        return None, f"No map: {e}."
    a = main.assignments["train"]
    read, _ = readers(main, "train")
    spec = main.clustering.dataset("train")
    thumbs = [thumbnails.add(spec, a.items[row], read, int(row)) if read else -1 for row in found.rows]
    # colour by every clustering of the same train images, so the map follows the browser's selector
    coloured = [r.assignments["train"].cluster[found.rows].tolist()
                if "train" in r.assignments and r.assignments["train"].items == a.items else None
                for r in run.results]
    sampled = (f"a uniform random sample of {len(found.rows):,} of the {found.n_total:,} train images "
               f"(seed {seed})" if len(found.rows) < found.n_total else f"all {found.n_total:,} train images")
    how = (f"reused from {cache_dir.name}/, computed earlier in {found.seconds:.1f} s" if found.cached
           else f"computed in {found.seconds:.1f} s, cached in {cache_dir.name}/")
    umap = ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in found.settings.items())
    note = (f"UMAP ({umap}) of {sampled} in the space "
            f"{main.method} clustered them ({found.space}); {how}. Colour: cluster. Hover a point to see "
            "its image; click it to open its cluster below.")
    return {"x": np.round(found.xy[:, 0], 4).tolist(), "y": np.round(found.xy[:, 1], 4).tolist(),
            "items": [a.items[row] for row in found.rows], "thumb": thumbs, "clusters": coloured}, note


def _cluster_browser(result: ClusterResult, source: str, counts: dict[str, int], thumb_px: int, seed: int,
                     progress: bool, readers: _Readers, thumbnails: Thumbnails) -> tuple[dict, dict[int, Sprite]]:
    """The JSON the page's script renders (without sprite URLs), and {cluster: its montage}.

    counts: images per cluster ("typical", "atypical", "random"), the least confident images listed
    ("uncertain") and nearest images per image shown ("similar")."""
    from ..clustering import outliers
    from ..similar import SimilarityIndex

    a = result.assignments[source]
    k = max(int(a.cluster.max()) + 1, result.clustering.n_clusters)
    sizes = np.bincount(a.cluster, minlength=k)
    centroids = bool(np.isfinite(a.distance).all())
    spread = np.bincount(a.cluster, weights=a.distance if centroids else a.confidence, minlength=k) / \
        np.maximum(sizes, 1)
    labelled = a.has_labels
    names = _class_names(result, source) if labelled else []
    if labelled:
        counts_by_class = _contingency(a, k, len(names))
        mapped = _mapped_classes(a, result.mapping)

    members = pick_members(a, counts["typical"], counts["random"], seed, n_atypical=counts["atypical"])
    uncertain = outliers(result.clustering, source=source, n_per_cluster=0,
                         n_uncertain=counts["uncertain"]).uncertain
    sprites, images_note = {}, None
    read, why = readers(result, source)
    if counts["typical"] + counts["atypical"] + counts["random"] == 0:
        images_note = "montages turned off"
    elif read is None:
        images_note = why
    else:
        sprites = _render_sprites(members, read, thumb_px, progress)

    # every image shown (montages, the uncertain list) with its most similar images
    shown_rows = np.array([m.row for chosen in members.values() for m in chosen] + uncertain.tolist(), np.int64)
    similar_note, neighbours = None, None
    if not counts["similar"]:
        similar_note = "similar images turned off"
    elif result.clustering.stores(source) is None:
        similar_note = "no similar images: the clustering has no stored features"
    else:
        neighbours = SimilarityIndex(result.clustering, source).of_rows(shown_rows, counts["similar"])[1]
    images: list[list] = []  # [name, cluster, confidence, thumbnail id (-1: none), [similar images]]
    at: dict[int, int] = {}
    spec = result.clustering.dataset(source)

    def image(row: int) -> int:
        if row not in at:
            at[row] = len(images)
            images.append([a.items[row], int(a.cluster[row]), round(float(a.confidence[row]), 4),
                           thumbnails.add(spec, a.items[row], read, row) if read else -1, []])
        return at[row]

    for i, row in enumerate(shown_rows.tolist()):
        entry = image(row)
        if neighbours is not None and not images[entry][4]:
            images[entry][4] = [image(int(r)) for r in neighbours[i]]

    clusters = []
    for cluster in range(k):
        entry = {"id": cluster, "size": int(sizes[cluster]), "spread": float(spread[cluster]),
                 "mapped": None, "mapped_rank": k, "majority": None, "purity": None, "labelled": 0, "top": [],
                 "tile_px": 0, "tiles": []}
        if labelled:
            row = counts_by_class[cluster]
            entry["labelled"] = int(row.sum())
            if row.sum():
                top = np.argsort(-row, kind="stable")[:3]
                entry.update(mapped=names[mapped[cluster]], mapped_rank=int(mapped[cluster]),
                             majority=names[top[0]], purity=float(row[top[0]] / row.sum()),
                             top=[[names[j], int(row[j])] for j in top if row[j]])
        sprite = sprites.get(cluster)
        if sprite is not None:
            entry["tile_px"] = sprite.tile_px
            entry["tiles"] = [{"name": a.items[m.row], "kind": m.kind, "ok": ok, "image": at[m.row]}
                              for m, ok in zip(members[cluster], sprite.readable)]
        clusters.append(entry)
    return {"labelled": labelled, "images_note": images_note, "centroids": centroids,
            "classes": sorted({c["mapped"] for c in clusters if c["mapped"] is not None},
                              key=names.index) if labelled else [],
            "clusters": clusters, "images": images, "uncertain": [at[row] for row in uncertain.tolist()],
            "similar_note": similar_note}, sprites


def _render_sprites(members, read, thumb_px: int, progress: bool) -> dict:
    from ..progress import progress_bar

    sprites = {}
    for cluster, chosen in progress_bar(members.items(), desc="report montages", unit="cluster", enabled=progress):
        images = [read(m.row) for m in chosen]
        first = next((im for im in images if im is not None), None)
        sprites[cluster] = render_sprite(images, tile_size(first, thumb_px) if first is not None else 8)
    return sprites


def _browser_note(result: ClusterResult, source: str, counts: dict[str, int], page_size: int, k: int) -> str:
    a = result.assignments[source]
    centroids = np.isfinite(a.distance).all()
    typical = ("closest to its centre (in the clustered feature space)" if centroids
               else "the clustering is most confident of")
    atypical = "farthest from it" if centroids else "least confident of"
    text = (f"{result.method}: images of {source} ({result.clustering.dataset(source)}): per cluster the "
            f"{counts['typical']} {typical}, the {counts['atypical']} {atypical} and {counts['random']} drawn at "
            "random from the rest.")
    if a.has_labels:
        text += " Purity: share of the cluster's labelled images in its majority class."
    if counts["similar"]:
        text += (f" Click an image for its {counts['similar']} most similar images (cosine similarity in the "
                 "clustered feature space, as nolabel similar lists them).")
    if k > page_size:
        text += f" {page_size} clusters per page."
    return text


def _found_figures(run_path: Path) -> list[Figure]:
    """Plots already in the run folder (e.g. a sweep's PNGs) and curves of every history.json."""
    from .plots import history_curves

    figures = []
    for path in sorted(run_path.rglob("*.png"))[:MAX_FOUND_PLOTS]:
        if (path.parent / THUMBNAILS_MARKER).exists() or path.stat().st_size > MAX_PLOT_BYTES:
            continue  # a report's own thumbnails, or not a plot
        figures.append(Figure(path.read_bytes(), str(path.relative_to(run_path)), path.stem))
    for path in sorted(run_path.rglob("history.json"))[:MAX_FOUND_PLOTS]:
        try:
            png = history_curves(read_json(path), str(path.relative_to(run_path)))
        except (ValueError, TypeError):
            continue
        if png is not None:
            figures.append(Figure(png, f"training curves: {path.relative_to(run_path)}", "training curves",
                                  wide=True))
    return figures
