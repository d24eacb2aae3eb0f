"""The report's HTML: one self-contained page, inline CSS and script, images as data URIs.

Every string that comes from data (dataset specs, file and class names, settings) goes through
`html.escape` here, or is embedded in the JSON block read by the script, where `<`, `>` and `&`
are written as `\\u003c`, `\\u003e`, `\\u0026`, so no data can close the script element.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from html import escape
from typing import Any

from .assets import CSS, JS

GENERATOR = "nolabel report"
# Nothing may load from anywhere but this page (data: URIs) and its own thumbnails folder.
CSP = ("default-src 'none'; img-src data: 'self' file:; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")


@dataclass
class Figure:
    png: bytes
    caption: str
    alt: str
    wide: bool = False  # a row of its own
    clustering: int | None = None  # shown with that clustering of the browser's selector (None: always)


@dataclass
class MetricsTable:
    header: list[str]
    rows: list[list[Any]]  # cells: str, or float (a metric, formatted to 3 decimals), or None
    note: str


@dataclass
class Selection:
    """The label-free choice among candidate clusterings: a table (cells as in MetricsTable; the
    chosen row marked), a note saying how and why, and plots of the criterion against K."""

    header: list[str]
    rows: list[list[Any]]
    chosen: int
    note: str
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Page:
    title: str
    subtitle: str
    headline: list[tuple[str, str]]
    run_cards: list[tuple[str, list[tuple[str, str]]]]
    metrics: MetricsTable | None
    metrics_missing: str
    heatmaps: list[Figure]
    sizes: list[Figure]
    # the JSON block the script renders: {"clusterings": [{"name", "note", "labelled", "classes",
    # "clusters", "images", "uncertain", ...}], "primary": index shown first, "page_size": clusters per
    # page, "map": {"x", "y", "items", "thumb", "clusters"} or None, "thumbs": {"sheets", "tile_px", "columns"}}
    clusters: dict[str, Any]
    selection: Selection | None = None
    map_note: str | None = None  # the map's caption, or why there is no map; None: no map section
    warnings: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)
    footer: str = ""


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def script_json(obj: Any) -> str:
    """JSON safe inside a <script> element (no `</script>`, no `<!--`)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(page: Page) -> str:
    sections = [("run", "What was run", _run_cards(page.run_cards))]
    if page.selection is not None:
        sections.append(("choice", "Choosing without labels", _selection(page.selection)))
    sections.append(("metrics", "Metrics", _metrics(page.metrics, page.metrics_missing)))
    if page.heatmaps:
        sections.append(("confusion", "Clusters × classes", _figures(page.heatmaps)
                         + '<p class="note">Rows are clusters ordered by the class each maps to; a row is '
                           "coloured by the share of the cluster's labelled images in each class.</p>"))
    if page.sizes:
        sections.append(("sizes", "Cluster sizes", _figures(page.sizes)))
    if page.map_note is not None:
        sections.append(("map", "Map", _map(page)))
    sections.append(("clusters", "Clusters", _cluster_browser(page)))
    if page.figures:
        sections.append(("plots", "Plots", _figures(page.figures)))
    if page.details:
        sections.append(("details", "Details", "".join(
            f'<details class="block"><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>'
            for summary, text in page.details)))
    toc = "".join(f'<a href="#{anchor}">{escape(title)}</a>' for anchor, title, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{escape(title)}</h2>{content}</section>'
                   for anchor, title, content in sections)
    stats = "".join(f'<div class="stat"><div class="v">{escape(value)}</div><div class="k">{escape(key)}</div></div>'
                    for key, value in page.headline)
    warnings = "".join(f'<p class="warn">{escape(w)}</p>' for w in page.warnings)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{GENERATOR}">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<link rel="icon" href="data:,">
<title>{escape(page.title)} · nolabel report</title>
<style>{CSS}</style>
</head>
<body>
<header class="top"><div class="wrap">
<div class="brand">nolabel report</div>
<h1>{escape(page.title)}</h1>
<p class="sub">{escape(page.subtitle)}</p>
<div class="stats">{stats}</div>
</div></header>
<nav class="toc wrap">{toc}</nav>
<main class="wrap">
{warnings}{body}
</main>
<footer class="wrap">{escape(page.footer)}</footer>
<script type="application/json" id="cluster-data">{script_json(page.clusters)}</script>
<script>{JS}</script>
</body>
</html>
"""


def _run_cards(cards: list[tuple[str, list[tuple[str, str]]]]) -> str:
    html = []
    for title, items in cards:
        rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
        html.append(f'<div class="card"><h3>{escape(title)}</h3><dl class="kv">{rows}</dl></div>')
    return f'<div class="cards">{"".join(html)}</div>'


def _metrics(table: MetricsTable | None, missing: str) -> str:
    if table is None:
        return f'<p class="note">{escape(missing)}</p>'
    head = "".join(f'<th class="{"num" if i >= 3 else ""}">{escape(h)}</th>' for i, h in enumerate(table.header))
    best = _best_per_source(table.rows)
    body = []
    for row in table.rows:
        cells = []
        for j, cell in enumerate(row):
            if isinstance(cell, float):
                cls = "num best" if best.get((row[2], j)) == cell else "num"
                cells.append(f'<td class="{cls}">{cell:.3f}</td>')
            elif cell is None:
                cells.append('<td class="num">–</td>')
            else:
                cells.append(f'<td class="{"data" if j == 1 else ("num" if j >= 3 else "")}">{escape(str(cell))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<div class="table-wrap"><table class="metrics"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div><p class="note">{escape(table.note)}</p>')


def _selection(selection: Selection) -> str:
    head = "".join(f'<th class="{"num" if i >= 2 else ""}">{escape(h)}</th>' for i, h in enumerate(selection.header))
    body = []
    for i, row in enumerate(selection.rows):
        cells = "".join(f'<td class="num">{cell:.3f}</td>' if isinstance(cell, float) else
                        '<td class="num">–</td>' if cell is None else
                        f'<td class="{"num" if j >= 2 else ""}">{escape(str(cell))}</td>' for j, cell in enumerate(row))
        body.append(f'<tr class="{"chosen" if i == selection.chosen else ""}">{cells}</tr>')
    return (f'<p class="note">{escape(selection.note)}</p><div class="table-wrap"><table class="metrics selection">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            + (_figures(selection.figures) if selection.figures else ""))


def _best_per_source(rows: list[list[Any]]) -> dict[tuple[str, int], float]:
    """{(source, column): best value} where several methods scored the same source."""
    best: dict[tuple[str, int], float] = {}
    methods: dict[str, int] = {}
    for row in rows:
        methods[row[2]] = methods.get(row[2], 0) + 1
        for j, cell in enumerate(row):
            if isinstance(cell, float):
                best[row[2], j] = max(best.get((row[2], j), cell), cell)
    return {key: value for key, value in best.items() if methods[key[0]] > 1}


def _figures(figures: list[Figure]) -> str:
    """Figures in a grid; one that belongs to a clustering is shown while the browser shows it."""
    return '<div class="figures">' + "".join(
        f'<figure class="{"wide" if f.wide else ""}"'
        + (f' data-clustering="{f.clustering}"' if f.clustering is not None else "")
        + f'><img src="{data_uri(f.png, "image/png")}" alt="{escape(f.alt)}">'
        f"<figcaption>{escape(f.caption)}</figcaption></figure>" for f in figures) + "</div>"


def _map(page: Page) -> str:
    """The map's canvas (the script draws it), its hover card and caption; or the caption alone."""
    note = f'<p class="note">{escape(page.map_note)}</p>'
    if page.clusters.get("map") is None:
        return note
    return (f'<div class="map-box"><canvas id="map-canvas" role="img" aria-label="2-D map of the images, '
            f'coloured by cluster"></canvas><div id="map-tip" class="map-tip" hidden><span class="thumb big"></span>'
            f'<div class="what"></div></div></div><div id="map-legend" class="legend"></div>{note}'
            '<noscript><p class="warn">The map needs JavaScript.</p></noscript>')


def _cluster_browser(page: Page) -> str:
    """The browser's controls; the script fills the clustering selector, the class filter (labelled
    clusterings) and the list."""
    clusterings = page.clusters["clusterings"]
    choices = "".join(f'<option value="{i}"{" selected" if i == page.clusters["primary"] else ""}>'
                      f'{escape(c["name"])}</option>' for i, c in enumerate(clusterings))
    chooser = (f'<label>clustering <select id="clustering-select">{choices}</select></label>'
               if len(clusterings) > 1 else "")
    class_filter = ('<label id="cluster-class-label">mapped to <select id="cluster-class"></select></label>'
                    if any(c["labelled"] for c in clusterings) else "")
    return f"""<p class="note" id="cluster-note"></p>
<div class="controls">
{chooser}
<label>order <select id="cluster-order"></select></label>
{class_filter}
<label>go to cluster <input id="cluster-find" type="number" min="0" inputmode="numeric"></label>
<span id="cluster-count" class="note" style="margin:0"></span>
</div>
<div id="uncertain" class="uncertain"></div>
<div class="pager" aria-label="cluster pages"></div>
<div id="cluster-list"></div>
<div class="pager" aria-label="cluster pages"></div>
<aside id="similar" class="similar" hidden aria-label="similar images">
<button type="button" class="close" aria-label="close">\u00d7</button>
<div class="query"><span class="thumb big"></span><div class="what"></div></div>
<div class="label">nearest images in the clustered feature space</div>
<div class="found"></div>
</aside>
<noscript><p class="warn">The cluster browser needs JavaScript.</p></noscript>"""
