"""The report's inline stylesheet and script (the page loads nothing from anywhere else).

The script renders the cluster browser one page at a time from the JSON block `#cluster-data`, so
a report of 1000 clusters keeps only one page of montages in the document and the browser fetches
or decodes no other cluster's images. It draws the 2-D map on a <canvas> (hover: the point's image;
click: its cluster in the browser) and the similar-images panel, both from thumbnail sheets
(`thumbs`: thumbnail i is tile i % columns² of sheet i // columns², row-major). Every value from
the data is set with `textContent` or as a style property, never parsed as HTML.
"""

CSS = """
:root {
  --ink: #111827; --muted: #6b7280; --faint: #9ca3af; --line: #e5e7eb; --bg: #f6f7f9;
  --card: #ffffff; --accent: #2563eb; --accent-soft: #dbeafe; --good: #059669; --tile: 64px;
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
table.selection tr.chosen td { font-weight: 700; background: #eef6ff; }
table.selection tr.chosen td:first-child::before { content: "\\2713  "; color: #1d4ed8; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.wrap { max-width: 1240px; margin: 0 auto; padding: 0 28px; }
header.top { background: #0f172a; color: #f8fafc; padding: 26px 0 22px; }
header.top .brand { font-size: 12px; letter-spacing: .12em; text-transform: uppercase; color: #93c5fd; }
header.top h1 { margin: 4px 0 2px; font-size: 26px; font-weight: 650; overflow-wrap: anywhere; }
header.top .sub { margin: 0; color: #cbd5e1; font-size: 13px; overflow-wrap: anywhere; }
.stats { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 18px; }
.stat { background: rgba(255,255,255,.07); border: 1px solid rgba(255,255,255,.12); border-radius: 8px;
  padding: 8px 14px; min-width: 112px; }
.stat .v { font-size: 20px; font-weight: 650; font-variant-numeric: tabular-nums; }
.stat .k { font-size: 11px; color: #cbd5e1; text-transform: uppercase; letter-spacing: .06em; }
nav.toc { display: flex; flex-wrap: wrap; gap: 4px 18px; padding-top: 14px; padding-bottom: 4px; font-size: 13px; }
nav.toc a { color: var(--muted); text-decoration: none; }
nav.toc a:hover { color: var(--accent); }
section { margin: 22px 0 30px; }
h2 { font-size: 18px; font-weight: 650; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; font-weight: 600; margin: 0 0 8px; }
.note { color: var(--muted); font-size: 12.5px; margin: 8px 0 0; max-width: 980px; }
.warn { background: #fff7ed; border: 1px solid #fed7aa; color: #9a3412; border-radius: 6px; padding: 8px 12px;
  font-size: 13px; margin: 0 0 12px; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(270px, 1fr)); gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 3px 14px; margin: 0; font-size: 13px; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; overflow-wrap: anywhere; }
.table-wrap { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
table.metrics { border-collapse: collapse; width: 100%; font-size: 13px; }
table.metrics th, table.metrics td { padding: 7px 12px; text-align: left; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
table.metrics tbody tr:last-child td { border-bottom: 0; }
table.metrics th { font-size: 11.5px; color: var(--muted); font-weight: 600; background: #fafafa; }
table.metrics th.group { text-align: center; border-bottom: 1px solid var(--line); }
table.metrics td.num, table.metrics th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics td.best { font-weight: 650; }
table.metrics td.data { white-space: normal; max-width: 280px; overflow-wrap: anywhere; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 14px;
  justify-items: start; align-items: start; }
figure.wide { grid-column: 1 / -1; }
figure { max-width: 100%; margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 12px; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 6px; overflow-wrap: anywhere; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 16px; margin: 0 0 12px; font-size: 13px; }
.controls label { color: var(--muted); }
.controls select, .controls input, .pager button { font: inherit; font-size: 13px; padding: 4px 8px;
  border: 1px solid #d1d5db; border-radius: 6px; background: #fff; color: var(--ink); }
.controls input { width: 90px; }
.pager { display: flex; align-items: center; gap: 6px; margin: 12px 0; }
.pager button { cursor: pointer; min-width: 34px; }
.pager button:disabled { color: var(--faint); cursor: default; }
.pager .where { color: var(--muted); font-size: 13px; margin: 0 6px; }
#cluster-list { display: flex; flex-direction: column; gap: 10px; }
.cluster { display: grid; grid-template-columns: 230px 1fr; gap: 8px 18px; background: var(--card);
  border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.cluster.flash { outline: 2px solid var(--accent); }
.cluster .head { display: flex; align-items: baseline; gap: 8px; }
.cluster .cid { font-weight: 700; font-size: 15px; }
.cluster .size { color: var(--muted); font-size: 12.5px; }
.cluster .mapped { margin-top: 4px; font-size: 13px; overflow-wrap: anywhere; }
.cluster .mapped b { font-weight: 650; }
.purity { display: flex; align-items: center; gap: 8px; margin-top: 6px; font-size: 12px; color: var(--muted); }
.purity .bar { flex: 0 0 90px; height: 7px; border-radius: 4px; background: var(--line); overflow: hidden; }
.purity .bar span { display: block; height: 100%; background: var(--good); }
.cluster .top { margin-top: 4px; font-size: 12px; color: var(--muted); overflow-wrap: anywhere; }
.cluster .spread { margin-top: 2px; font-size: 12px; color: var(--faint); }
.montage { display: flex; flex-wrap: wrap; gap: 4px 18px; align-items: flex-start; min-width: 0; }
.montage .group { min-width: 0; }
.montage .label { font-size: 10.5px; color: var(--faint); text-transform: uppercase; letter-spacing: .06em;
  margin-bottom: 3px; }
.tiles { display: flex; flex-wrap: wrap; gap: 3px; }
.tile { width: var(--tile); height: var(--tile); border-radius: 3px; background-color: #e2e5ea;
  background-repeat: no-repeat; }
.tile.pixelated { image-rendering: pixelated; }
.tile.missing { background-image: none !important; }
.noimages { color: var(--faint); font-size: 12.5px; }
.cluster .meta { grid-row: span 2; min-width: 0; }
details.names { grid-column: 2; font-size: 12px; color: var(--muted); }
details.names summary { cursor: pointer; width: max-content; }
details.names ol { margin: 4px 0 0; padding-left: 22px; columns: 3 260px; column-gap: 28px; }
details.names li { overflow-wrap: anywhere; }
details.block { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px;
  margin-bottom: 10px; }
details.block summary { cursor: pointer; font-weight: 600; }
pre { font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-x: auto;
  margin: 8px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; }
footer { color: var(--faint); font-size: 12px; padding: 10px 0 40px; }
.thumb { display: inline-block; flex: none; width: var(--tile); height: var(--tile); border-radius: 3px;
  background-color: #e2e5ea; background-repeat: no-repeat; }
.thumb.big { width: 96px; height: 96px; }
.thumb.pixelated { image-rendering: pixelated; }
.thumb.missing { background-image: none !important; }
.clickable { cursor: pointer; }
.clickable:hover, .clickable:focus-visible { outline: 2px solid var(--accent); outline-offset: 1px; }
.map-box { position: relative; background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
#map-canvas { display: block; width: 100%; height: min(620px, 62vw); cursor: crosshair; }
.map-tip { position: absolute; z-index: 5; pointer-events: none; display: flex; gap: 8px; align-items: flex-start;
  max-width: 330px; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px;
  box-shadow: 0 4px 14px rgba(15, 23, 42, .16); font-size: 12px; overflow-wrap: anywhere; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 6px; margin-top: 8px; font-size: 12px; }
.legend button { font: inherit; font-size: 12px; padding: 1px 7px; border: 1px solid var(--line); border-radius: 5px;
  background: #fff; color: var(--ink); cursor: pointer; }
.legend button.on { border-color: var(--ink); font-weight: 650; }
.swatch { display: inline-block; width: 9px; height: 9px; border-radius: 2px; margin-right: 4px; }
.uncertain { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 14px;
  margin-bottom: 12px; }
.uncertain .row { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.uncertain figure, .similar figure { margin: 0; padding: 0; border: 0; background: none; text-align: center;
  font-size: 11px; color: var(--muted); }
.similar { position: fixed; z-index: 10; top: 12px; right: 12px; bottom: 12px; width: 360px; overflow-y: auto;
  background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px;
  box-shadow: 0 8px 30px rgba(15, 23, 42, .22); }
.similar .close { position: absolute; top: 6px; right: 8px; font-size: 20px; border: 0; background: none;
  cursor: pointer; color: var(--muted); }
.similar .query { display: flex; gap: 10px; align-items: flex-start; margin: 4px 24px 10px 0; font-size: 12.5px;
  overflow-wrap: anywhere; }
.similar .query button { font: inherit; font-size: 12px; margin-top: 6px; padding: 2px 8px; border: 1px solid #d1d5db;
  border-radius: 6px; background: #fff; cursor: pointer; }
.similar .label { font-size: 10.5px; color: var(--faint); text-transform: uppercase; letter-spacing: .06em; }
.similar .found { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px 6px; margin-top: 6px; }
@media (max-width: 760px) {
  .cluster { grid-template-columns: 1fr; } .cluster .meta { grid-row: auto; } details.names { grid-column: 1; }
  :root { --tile: 52px; }
}
"""

JS = """
(function () {
  "use strict";
  const all = JSON.parse(document.getElementById("cluster-data").textContent);
  const list = document.getElementById("cluster-list");
  const pagers = Array.from(document.querySelectorAll(".pager"));
  const clusteringSelect = document.getElementById("clustering-select");
  const orderSelect = document.getElementById("cluster-order");
  const classSelect = document.getElementById("cluster-class");
  const classLabel = document.getElementById("cluster-class-label");
  const findInput = document.getElementById("cluster-find");
  const tilePx = parseInt(getComputedStyle(document.documentElement).getPropertyValue("--tile"), 10) || 64;
  const pageSize = all.page_size;
  const thumbs = all.thumbs;
  const map = all.map;
  let data = null;
  let shownIndex = all.primary;
  const state = { order: "", cls: "", page: 0 };
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf"];

  function colour(c) { return c < PALETTE.length ? PALETTE[c] : "hsl(" + ((c * 137.508) % 360) + ",62%,46%)"; }

  const orders = {
    "class": (a, b) => (a.mapped_rank - b.mapped_rank) || (b.size - a.size) || (a.id - b.id),
    "size": (a, b) => (b.size - a.size) || (a.id - b.id),
    "small": (a, b) => (a.size - b.size) || (a.id - b.id),
    "purity": (a, b) => (a.purity - b.purity) || (b.size - a.size) || (a.id - b.id),
    "id": (a, b) => a.id - b.id,
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function option(value, text) {
    const node = el("option", "", text);
    node.value = value;
    return node;
  }

  function percent(x) { return (100 * x).toFixed(x > 0.995 && x < 1 ? 1 : 0) + "%"; }

  // A thumbnail `id` of the sheets, `px` pixels wide (id -1: a grey square).
  function thumb(id, px, className) {
    const node = el("span", "thumb" + (className ? " " + className : ""));
    node.style.width = node.style.height = px + "px";
    if (id < 0) {
      node.classList.add("missing");
      return node;
    }
    const perSheet = thumbs.columns * thumbs.columns;
    const sheet = Math.floor(id / perSheet);
    const at = id % perSheet;
    node.style.backgroundImage = 'url("' + thumbs.sheets[sheet] + '")';
    node.style.backgroundSize = (thumbs.columns * px) + "px auto";
    const column = at % thumbs.columns, row = Math.floor(at / thumbs.columns);
    node.style.backgroundPosition = (-column * px) + "px " + (-row * px) + "px";
    if (thumbs.tile_px[sheet] < px) node.classList.add("pixelated");
    return node;
  }

  function clickable(node, action) {
    node.classList.add("clickable");
    node.tabIndex = 0;
    node.setAttribute("role", "button");
    node.addEventListener("click", action);
    node.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); action(); }
    });
    return node;
  }

  // ---- similar images: the panel for image `index` of the shown clustering's `images`
  const panel = document.getElementById("similar");

  function describe(image) {
    return "cluster #" + image[1] + " \u00b7 confidence " + percent(image[2]);
  }

  function openSimilar(index) {
    const image = data.images[index];
    const query = panel.querySelector(".query");
    const what = el("div", "what");
    what.appendChild(el("div", "name", image[0]));
    what.appendChild(el("div", "note", describe(image)));
    const open = el("button", "", "open cluster #" + image[1]);
    open.type = "button";
    open.addEventListener("click", () => showCluster(image[1]));
    what.appendChild(open);
    query.replaceChildren(thumb(image[3], 96, "big"), what);
    const found = panel.querySelector(".found");
    found.replaceChildren(...image[4].map((j) => {
      const other = data.images[j];
      const figure = el("figure");
      figure.title = other[0] + " (" + describe(other) + ")";
      figure.appendChild(thumb(other[3], 72));
      figure.appendChild(el("figcaption", "", "#" + other[1]));
      return clickable(figure, () => showCluster(other[1]));
    }));
    if (!image[4].length) found.appendChild(el("div", "note", data.similar_note || "none precomputed"));
    panel.hidden = false;
  }

  panel.querySelector(".close").addEventListener("click", () => { panel.hidden = true; });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") panel.hidden = true; });

  function visible() {
    const shown = data.clusters.filter((c) => state.cls === "" || c.mapped === state.cls);
    return shown.sort(orders[state.order]);
  }

  function tiles(c, kind) {
    const box = el("div", "tiles");
    c.tiles.forEach((t, i) => {
      if (t.kind !== kind) return;
      const tile = el("span", "tile");
      tile.title = t.name;
      tile.setAttribute("role", "img");
      tile.setAttribute("aria-label", t.name);
      if (t.image !== undefined) clickable(tile, () => openSimilar(t.image));
      if (!t.ok || !c.sprite) {
        tile.classList.add("missing");
      } else {
        tile.style.backgroundImage = 'url("' + c.sprite + '")';
        tile.style.backgroundSize = (c.tiles.length * tilePx) + "px " + tilePx + "px";
        tile.style.backgroundPosition = (-i * tilePx) + "px 0";
        if (c.tile_px < tilePx) tile.classList.add("pixelated");
      }
      box.appendChild(tile);
    });
    return box;
  }

  function card(c) {
    const node = el("article", "cluster");
    node.id = "cluster-" + c.id;
    const meta = el("div", "meta");
    const head = el("div", "head");
    head.appendChild(el("span", "cid", "#" + c.id));
    head.appendChild(el("span", "size", c.size.toLocaleString("en-US") + (c.size === 1 ? " image" : " images")));
    meta.appendChild(head);
    if (data.labelled) {
      if (c.labelled > 0) {
        const mapped = el("div", "mapped", "mapped to ");
        mapped.appendChild(el("b", "", c.mapped));
        meta.appendChild(mapped);
        const purity = el("div", "purity");
        const bar = el("div", "bar");
        const fill = el("span");
        fill.style.width = percent(c.purity);
        bar.appendChild(fill);
        purity.appendChild(bar);
        purity.appendChild(el("span", "", percent(c.purity) + " pure"
          + (c.majority !== c.mapped ? ", majority " + c.majority : "")));
        meta.appendChild(purity);
        const top = el("div", "top", c.top.map((t) => t[0] + ": " + t[1]).join(" \u00b7 "));
        top.title = "labelled images per class";
        meta.appendChild(top);
      } else {
        meta.appendChild(el("div", "mapped", "no labelled image"));
      }
    }
    meta.appendChild(el("div", "spread", data.centroids ? "mean distance to centre " + c.spread.toPrecision(3)
      : "mean confidence " + percent(c.spread)));
    node.appendChild(meta);

    const montage = el("div", "montage");
    if (!c.tiles.length) {
      montage.appendChild(el("div", "noimages", data.images_note || "no images"));
    }
    const typical = data.centroids ? "closest to the centre" : "most confident";
    const atypical = data.centroids ? "farthest from the centre" : "least confident";
    [["typical", typical], ["atypical", atypical], ["random", "random members"]].forEach(([kind, title]) => {
      if (!c.tiles.some((t) => t.kind === kind)) return;
      const group = el("div", "group");
      group.appendChild(el("div", "label", title));
      group.appendChild(tiles(c, kind));
      montage.appendChild(group);
    });
    node.appendChild(montage);

    if (c.tiles.length) {
      const names = el("details", "names");
      names.appendChild(el("summary", "", "image names"));
      const ol = el("ol");
      const kinds = { typical: "", atypical: " (least typical)", random: " (random)" };
      c.tiles.forEach((t) => ol.appendChild(el("li", "", t.name + kinds[t.kind])));
      names.appendChild(ol);
      node.appendChild(names);
    }
    return node;
  }

  function drawPager(pager, pages) {
    pager.replaceChildren();
    const go = (p) => () => { state.page = p; render(); document.getElementById("clusters").scrollIntoView(); };
    const button = (text, page, label) => {
      const b = el("button", "", text);
      b.type = "button";
      b.setAttribute("aria-label", label);
      b.disabled = page < 0 || page >= pages || page === state.page;
      b.addEventListener("click", go(page));
      pager.appendChild(b);
    };
    button("\u00ab", 0, "first page");
    button("\u2039", state.page - 1, "previous page");
    pager.appendChild(el("span", "where", "page " + (state.page + 1) + " of " + pages));
    button("\u203a", state.page + 1, "next page");
    button("\u00bb", pages - 1, "last page");
  }

  function render() {
    const shown = visible();
    const pages = Math.max(1, Math.ceil(shown.length / pageSize));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * pageSize;
    const slice = shown.slice(start, start + pageSize);
    list.replaceChildren(...slice.map(card));
    document.getElementById("cluster-count").textContent = shown.length > pageSize
      ? "clusters " + (start + 1) + "\u2013" + (start + slice.length) + " of " + shown.length
      : shown.length + (shown.length === 1 ? " cluster" : " clusters");
    pagers.forEach((p) => { p.hidden = pages < 2; drawPager(p, pages); });
  }

  function drawUncertain() {
    const box = document.getElementById("uncertain");
    box.hidden = !data.uncertain.length;
    const row = el("div", "row");
    data.uncertain.forEach((index) => {
      const image = data.images[index];
      const figure = el("figure");
      figure.title = image[0] + " (" + describe(image) + ")";
      figure.appendChild(thumb(image[3], tilePx));
      figure.appendChild(el("figcaption", "", "#" + image[1] + " \u00b7 " + percent(image[2])));
      row.appendChild(clickable(figure, () => openSimilar(index)));
    });
    box.replaceChildren(el("h3", "", "Most uncertain images"), el("div", "note",
      "The " + data.uncertain.length + " images this clustering is least confident of (confidence: "
      + (data.centroids ? "the margin between the nearest and second-nearest centre" : "the head's probability")
      + "). Click one for its nearest images."), row);
  }

  // Open cluster `id` in the browser (clearing a class filter that hides it); false when it has no card.
  function showCluster(id) {
    if (state.cls !== "" && !data.clusters.some((c) => c.id === id && c.mapped === state.cls)) {
      state.cls = "";
      if (classSelect) classSelect.value = "";
    }
    const at = visible().findIndex((c) => c.id === id);
    if (at < 0) return false;
    state.page = Math.floor(at / pageSize);
    render();
    const node = document.getElementById("cluster-" + id);
    node.scrollIntoView({ block: "center" });
    node.classList.add("flash");
    mapState.cluster = id;
    drawMap();
    return true;
  }

  // ---- the map: points coloured by the shown clustering's clusters (the primary's when it mapped other images)
  const canvas = document.getElementById("map-canvas");
  const tip = document.getElementById("map-tip");
  const mapState = { cluster: null, sx: null, sy: null };

  function mapClusters() { return map.clusters[shownIndex] || map.clusters[all.primary]; }

  function drawMap() {
    if (!map || !canvas) return;
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    // positions lie in [0, 1] x [0, 1] with one side spanning all of it: fit them, aspect kept
    const n = map.x.length, margin = 14;
    const xMax = Math.max(...map.x) || 1, yMax = Math.max(...map.y) || 1;
    const scale = Math.max(1, Math.min((w - 2 * margin) / xMax, (h - 2 * margin) / yMax));
    const ox = (w - scale * xMax) / 2, oy = (h - scale * yMax) / 2;
    const r = n > 8000 ? 1.4 : n > 1500 ? 2.2 : 3.2;
    const clusters = mapClusters();
    mapState.sx = new Float32Array(n);
    mapState.sy = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      mapState.sx[i] = ox + map.x[i] * scale;
      mapState.sy[i] = oy + (yMax - map.y[i]) * scale;
    }
    // the selected cluster drawn last, over the others
    const order = [false, true];
    order.forEach((selectedPass) => {
      for (let i = 0; i < n; i++) {
        const selected = mapState.cluster !== null && clusters[i] === mapState.cluster;
        if (selected !== selectedPass) continue;
        ctx.globalAlpha = mapState.cluster === null || selected ? 0.85 : 0.13;
        ctx.fillStyle = colour(clusters[i]);
        ctx.beginPath();
        ctx.arc(mapState.sx[i], mapState.sy[i], selected ? r + 0.8 : r, 0, 2 * Math.PI);
        ctx.fill();
      }
    });
    ctx.globalAlpha = 1;
    drawLegend(clusters);
  }

  function drawLegend(clusters) {
    const legend = document.getElementById("map-legend");
    const ids = Array.from(new Set(clusters)).sort((a, b) => a - b);
    const own = Boolean(map.clusters[shownIndex]);
    const items = [];
    if (!own) {
      items.push(el("span", "note", "Coloured by " + all.clusterings[all.primary].name
        + ": this clustering is of other images, so clicking does not open its clusters."));
    } else if (ids.length <= 60) {
      ids.forEach((id) => {
        const b = el("button", id === mapState.cluster ? "on" : "");
        b.type = "button";
        const swatch = el("span", "swatch");
        swatch.style.background = colour(id);
        b.appendChild(swatch);
        b.appendChild(document.createTextNode("#" + id));
        b.addEventListener("click", () => showCluster(id));
        items.push(b);
      });
    }
    legend.replaceChildren(...items);
  }

  function nearestPoint(event) {
    const box = canvas.getBoundingClientRect();
    const x = event.clientX - box.left, y = event.clientY - box.top;
    let best = -1, bestD = 64;  // within 8 px
    for (let i = 0; i < mapState.sx.length; i++) {
      const dx = mapState.sx[i] - x, dy = mapState.sy[i] - y, d = dx * dx + dy * dy;
      if (d < bestD) { best = i; bestD = d; }
    }
    return { index: best, x: x, y: y };
  }

  if (map && canvas) {
    canvas.addEventListener("mousemove", (event) => {
      const found = nearestPoint(event);
      if (found.index < 0) { tip.hidden = true; return; }
      const i = found.index;
      tip.replaceChildren(thumb(map.thumb[i], 96, "big"),
        el("div", "what", "#" + mapClusters()[i] + " \u00b7 " + map.items[i]));
      tip.hidden = false;
      const left = found.x + 16 + tip.offsetWidth > canvas.clientWidth ? found.x - 16 - tip.offsetWidth : found.x + 16;
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = Math.max(0, Math.min(found.y - 20, canvas.clientHeight - tip.offsetHeight)) + "px";
    });
    canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
    canvas.addEventListener("click", (event) => {
      const found = nearestPoint(event);
      if (found.index >= 0 && map.clusters[shownIndex]) showCluster(mapClusters()[found.index]);
    });
    window.addEventListener("resize", drawMap);
  }

  // Show clustering `index`: its clusters, its note, its orders and class filter, and its figures.
  function choose(index) {
    data = all.clusterings[index];
    shownIndex = index;
    panel.hidden = true;
    mapState.cluster = null;
    document.getElementById("cluster-note").textContent = data.note;
    const orderChoices = (data.labelled ? [["class", "mapped class"]] : []).concat(
      [["size", "largest first"], ["small", "smallest first"]],
      data.labelled ? [["purity", "least pure first"]] : [], [["id", "cluster number"]]);
    orderSelect.replaceChildren(...orderChoices.map(([v, t]) => option(v, t)));
    if (classSelect) {
      classSelect.replaceChildren(option("", "any class"), ...data.classes.map((n) => option(n, n)));
      classLabel.hidden = !data.labelled;
    }
    state.order = orderSelect.value;
    state.cls = "";
    state.page = 0;
    document.querySelectorAll("[data-clustering]").forEach((node) => {
      node.hidden = node.getAttribute("data-clustering") !== String(index);
    });
    drawUncertain();
    render();
    drawMap();
  }

  if (clusteringSelect) {
    clusteringSelect.addEventListener("change", () => choose(parseInt(clusteringSelect.value, 10)));
  }
  orderSelect.addEventListener("change", () => { state.order = orderSelect.value; state.page = 0; render(); });
  if (classSelect) {
    classSelect.addEventListener("change", () => { state.cls = classSelect.value; state.page = 0; render(); });
  }
  findInput.addEventListener("change", () => showCluster(parseInt(findInput.value, 10)));
  choose(all.primary);
})();
"""
