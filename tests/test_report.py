"""The HTML report: rendered from small real runs (the real pipeline) and opened in headless Chromium."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image
import report_helpers
from report_helpers import (HOSTILE_NAMES, cluster_run, console_errors, digits_run, hostile_names_run,
                            image_folder, pixel_store)

from nolabel.cli import main as cli_main
from nolabel.clustering import SourceAssignments, read_assignments
from nolabel.errors import NolabelError
from nolabel.report import write_report
from nolabel.report.montage import pick_members
from nolabel.report.page import script_json
from nolabel.store import write_store

chromium, open_page = report_helpers.chromium, report_helpers.open_page  # the fixtures of the browser tests
# File names a browser would run or render if the page pasted them in as markup (no "/" in a name).


quick_map, digits = report_helpers.quick_map, report_helpers.digits  # the module's map stand-in, a digits run


def dom_text(driver) -> str:
    return driver.execute_script("return document.body.textContent")


def open_all_names(driver) -> None:
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")


# ---- browser tests --------------------------------------------------------------------------------

def test_digits_report_in_chromium(digits, open_page, tmp_path):
    report = digits / "report.html"
    driver = open_page(report)
    assert console_errors(driver) == []
    metrics = json.loads((digits / "cluster" / "metrics.json").read_text())

    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.metrics tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent))")
    header = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.metrics th')).map(c => c.textContent)")
    assert "ACC fit on eval" in header and "ACC fit on train" in header
    by_source = {r[2]: dict(zip(header, r)) for r in rows}
    assert set(by_source) == {"train", "digits_eval"}
    for source, row in by_source.items():
        assert row["ACC fit on eval"] == f"{metrics[source]['fit_on_eval']['acc']:.3f}"
        assert row["NMI"] == f"{metrics[source]['fit_on_eval']['nmi']:.3f}"
    assert by_source["digits_eval"]["ACC fit on train"] == f"{metrics['digits_eval']['fit_on_train']['acc']:.3f}"
    assert "Hungarian" in driver.find_element("css selector", "#metrics .note").text

    # every cluster: one card, 8 typical + 4 least typical + 4 random tiles, all drawn from one sprite
    cards = driver.find_elements("css selector", "#cluster-list .cluster")
    assert len(cards) == 10
    tiles = driver.execute_script(
        "return Array.from(document.querySelectorAll('#cluster-list .cluster')).map(c => ["
        "c.id, c.querySelectorAll('.tile').length, c.querySelectorAll('.tile.missing').length,"
        "getComputedStyle(c.querySelector('.tile')).backgroundImage.slice(0, 26), c.querySelector('.tile').title])")
    assert sorted(t[0] for t in tiles) == [f"cluster-{i}" for i in range(10)]
    assert all(n == 16 and missing == 0 and image.startswith('url("data:image/png;base64')
               for _, n, missing, image, _ in tiles)

    # the first tile of each cluster is its image closest to the centroid (smallest distance)
    train = read_assignments(digits / "cluster" / "assignments.csv")["train"]
    items = [r["item"] for r in csv.DictReader(open(digits / "features" / "digits" / "index.csv"))]
    for card_id, _, _, _, first_name in tiles:
        members = np.flatnonzero(train.cluster == int(card_id.split("-")[1]))
        assert first_name == items[members[np.argmin(train.distance[members])]]

    # purity and size shown per cluster, against a direct count
    sizes = np.bincount(train.cluster, minlength=10)
    shown = driver.execute_script(
        "return Array.from(document.querySelectorAll('#cluster-list .cluster')).map(c => ["
        "c.id, c.querySelector('.size').textContent, c.querySelector('.purity').textContent])")
    for card_id, size_text, purity_text in shown:
        cluster = int(card_id.split("-")[1])
        counts = np.bincount(train.label[train.cluster == cluster], minlength=10)
        assert size_text == f"{sizes[cluster]} images"
        assert purity_text.startswith(f"{100 * counts.max() / counts.sum():.0f}% pure")

    figures = driver.execute_script(
        "return Array.from(document.querySelectorAll('figure img')).map(i => [i.alt, i.naturalWidth > 100])")
    assert ["confusion heatmap of train", True] in figures
    assert ["confusion heatmap of digits_eval", True] in figures
    assert ["cluster sizes of train", True] in figures
    assert driver.find_elements("css selector", ".pager")[0].get_attribute("hidden") == "true"

    shot = tmp_path / "digits-report.png"
    driver.save_screenshot(str(shot))
    assert 10_000 < shot.stat().st_size < 2_000_000


SCAN_RUN = ["name=scan-digits", "data.train=digits", "model.name=pixels", "extract.image_size=8",
            "pca.n_components=16", "baseline.enabled=false", "report=false", "scan.epochs=4", "scan.n_heads=2",
            "scan.batch_size=256", "scan.lr=0.01", "scan.weak_views=1", "scan.strong_views=1", "scan.n_neighbors=10",
            "selflabel.epochs=2", "selflabel.batch_size=256", "selflabel.threshold=0.9", "selflabel.lr=0.001"]


def test_scan_run_report_shows_self_labeling_first_and_switches_clusterings(tmp_path, open_page):
    """The run's primary clustering - its last stage, self-labeling - is what the headline and the
    browser show; the selector switches the browser, and the figures, to any other clustering."""
    from nolabel.clustering import load_clustering
    from nolabel.config import load_config
    from nolabel.pipeline import run

    summary = run(load_config(None, SCAN_RUN), tmp_path / "r", progress=False, log=lambda line: None)
    selflabel = load_clustering(tmp_path / "r" / "selflabel")
    driver = open_page(write_report(tmp_path / "r", progress=False), height=1400)
    assert console_errors(driver) == []
    # the headline is self-labeling's
    stats = dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('.stat')).map(s => [s.querySelector('.k').textContent,"
        " s.querySelector('.v').textContent])"))
    assert stats["ACC"] == f"{selflabel.metrics['train']['fit_on_eval']['acc']:.3f}"
    selector = driver.find_element("css selector", "#clustering-select")
    options = driver.execute_script("return Array.from(arguments[0].options).map(o => [o.text, o.selected])",
                                    selector)
    assert options == [[row["method"], row["folder"] == summary["primary"]] for row in summary["rows"]]
    assert options[-1] == ["pixels + SCAN + self-labeling", True]

    def shown():
        return driver.execute_script(
            "return [document.getElementById('cluster-note').textContent,"
            " Array.from(document.querySelectorAll('#cluster-list .cluster')).map(c => c.querySelector('.size')"
            ".textContent), Array.from(document.querySelectorAll('figure[data-clustering]'))"
            ".filter(f => !f.hidden).map(f => f.dataset.clustering)]")

    note, sizes, figures = shown()
    assert note.startswith("pixels + SCAN + self-labeling") and "most confident" in note
    assert sorted(int(t.split()[0]) for t in sizes) == sorted(np.bincount(selflabel.assignments["train"].cluster,
                                                                           minlength=10).tolist())
    assert figures and set(figures) == {"2"}
    # switch to the k-means clustering: its clusters, its note, its figures
    driver.execute_script("arguments[0].value = '0'; arguments[0].dispatchEvent(new Event('change'))", selector)
    kmeans = load_clustering(tmp_path / "r" / "cluster")
    note, sizes, figures = shown()
    assert note.startswith("pixels + PCA + k-means") and "closest to its centre" in note
    assert sorted(int(t.split()[0]) for t in sizes) == sorted(np.bincount(kmeans.assignments["train"].cluster,
                                                                           minlength=10).tolist())
    assert set(figures) == {"0"}
    # the map of the train images is coloured by whichever clustering the browser shows
    mapped = driver.execute_script("return JSON.parse(document.getElementById('cluster-data').textContent).map")
    for row, clusters in zip(summary["rows"], mapped["clusters"]):
        assert clusters == load_clustering(row["folder"]).assignments["train"].cluster.tolist()
    legend = driver.execute_script(
        "return Array.from(document.querySelectorAll('#map-legend button')).map(b => b.textContent)")
    assert legend == [f"#{c}" for c in np.unique(kmeans.assignments["train"].cluster)]
    assert console_errors(driver) == []


def test_unlabelled_folder_with_html_names(tmp_path, open_page):
    run_dir = hostile_names_run(tmp_path, n_plain=15)
    folder, names = tmp_path / "photos", HOSTILE_NAMES + [f"plain-{i}.png" for i in range(15)]
    report = write_report(run_dir)

    html = report.read_text(encoding="utf-8")
    assert "<em class=injected>" not in html and 'onerror="window.pwned' not in html
    driver = open_page(report)
    assert console_errors(driver) == []
    open_all_names(driver)
    text = dom_text(driver)
    for name in HOSTILE_NAMES:
        assert name in text  # shown as text, exactly as the file is named
    assert driver.execute_script("return document.querySelectorAll('.injected, img[src=x]').length") == 0
    assert driver.execute_script("return window.pwned === undefined")
    assert f"images:{folder}" in text

    # browse by cluster without labels: montages and sizes, no class columns, no heatmap, no table
    cards = driver.find_elements("css selector", "#cluster-list .cluster")
    assert len(cards) == 3
    assert sum(int(c.find_element("css selector", ".size").text.split()[0]) for c in cards) == len(names)
    assert driver.execute_script("return document.querySelectorAll('.tile:not(.missing)').length") == len(names)
    assert driver.find_elements("css selector", ".mapped, .purity, #cluster-class, table.metrics, #confusion") == []
    assert "No labels" in driver.find_element("css selector", "#metrics").text
    driver.save_screenshot(str(tmp_path / "unlabelled-report.png"))


def test_class_names_from_folders_are_escaped(tmp_path, open_page):
    root = tmp_path / "classes"
    classes = ["<em class=injected>cats<em>", 'dogs & "co"', "$x^{2$ birds"]  # the last breaks mathtext
    for i, cls in enumerate(classes):
        image_folder(root / cls, [f"{j}.png" for j in range(6)], seed=i)
    store = pixel_store(tmp_path / "run" / "features" / "classes", f"folder:{root}")
    run_dir = cluster_run(tmp_path / "run", [store], k=3, pca_components=8)
    driver = open_page(write_report(run_dir))
    assert console_errors(driver) == []
    text = dom_text(driver)
    assert all(cls in text for cls in classes)
    assert driver.execute_script("return document.querySelectorAll('.injected').length") == 0
    mapped = driver.execute_script(
        "return Array.from(document.querySelectorAll('#cluster-class option')).slice(1).map(o => o.value)")
    shown = driver.execute_script(
        "return Array.from(document.querySelectorAll('.mapped b')).map(b => b.textContent)")
    assert sorted(mapped) == sorted(set(shown)) and set(shown) <= set(classes) and shown


def test_thousand_clusters_paginate(tmp_path, open_page):
    n, k = 2000, 1000
    rng = np.random.default_rng(0)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    features = rng.normal(size=(n, 16)).astype(np.float32)
    from nolabel.data import load

    ds = load(f"images:{folder}")
    store = write_store(tmp_path / "run" / "features" / "many", features, ds.labels, ds.item_names,
                        {"dataset": f"images:{folder}", "model": "random"})
    run_dir = cluster_run(tmp_path / "run", [store], k=k, pca_components=16)

    report = write_report(run_dir)
    assert report.stat().st_size < 2_500_000  # one small sprite per cluster, ~2 KB each
    folder_report = write_report(run_dir, out=run_dir / "lazy.html", max_embedded_bytes=0)
    # no thumbnail inside: the browser's JSON (with each shown image's 8 similar ones) and the map's 2,000 points
    assert folder_report.stat().st_size < 900_000
    data = json.loads(re.search(r'id="cluster-data">(.*?)</script>', folder_report.read_text(encoding="utf-8"),
                                re.S).group(1))
    assert data["thumbs"]["sheets"] == ["lazy_files/thumbnails-0000.webp", "lazy_files/thumbnails-0001.webp"]
    assert (run_dir / "lazy_files" / "thumbnails-0001.webp").is_file()
    sprites = sorted((run_dir / "lazy_files").glob("clustering-0-cluster-*.png"))
    assert len(sprites) == k - int(np.sum(np.bincount(read_assignments(run_dir / "cluster" / "assignments.csv")
                                                      ["train"].cluster, minlength=k) == 0))

    for path in (report, folder_report):
        driver = open_page(path)
        assert console_errors(driver) == []
        # only the first page of clusters is in the document
        assert len(driver.find_elements("css selector", "#cluster-list .cluster")) == 50
        assert driver.find_element("css selector", "#cluster-count").text.endswith(f"of {k}")
        driver.find_element("css selector", ".pager button[aria-label='next page']").click()
        ids = driver.execute_script(
            "return Array.from(document.querySelectorAll('#cluster-list .cluster')).map(c => c.id)")
        assert len(ids) == 50 and "page 2 of 20" in driver.find_element("css selector", ".pager").text
        # go to a cluster on another page
        driver.execute_script("const f = document.getElementById('cluster-find'); f.value = '999';"
                              "f.dispatchEvent(new Event('change'))")
        assert driver.find_elements("css selector", "#cluster-999")
        assert console_errors(driver) == []
    urls = driver.execute_script(
        "return Array.from(document.querySelectorAll('.tile')).map(t => getComputedStyle(t).backgroundImage)")
    assert urls and all("lazy_files/clustering-0-cluster-" in u for u in urls if u != "none")
    assert len({u for u in urls}) <= 50


# ---- library and CLI ------------------------------------------------------------------------------

def test_pick_members_takes_the_closest_then_random_others():
    rng = np.random.default_rng(1)
    cluster = rng.integers(0, 5, 300)
    distance = rng.random(300)
    members = pick_members(SourceAssignments(cluster, rng.random(300), distance, np.full(300, -1)), n_typical=4,
                           n_random=3)
    assert sorted(members) == sorted(set(cluster.tolist()))
    for c, chosen in members.items():
        rows = np.flatnonzero(cluster == c)
        typical = [m.row for m in chosen if m.kind == "typical"]
        drawn = [m.row for m in chosen if m.kind == "random"]
        assert typical == rows[np.argsort(distance[rows])][:4].tolist()
        assert len(drawn) == 3 and not set(drawn) & set(typical) and set(drawn) <= set(rows.tolist())


def test_script_json_cannot_close_the_script_element():
    value = {"name": "</script><script>alert(1)</script><!--", "amp": "a&b"}
    text = script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value


def test_standalone_cluster_folder_and_cli(digits, tmp_path, capsys):
    cluster_dir = digits / "cluster"
    out = tmp_path / "page.html"
    assert cli_main(["report", str(cluster_dir), "--out", str(out), "--random", "2", "--atypical", "1",
                     "--similar", "3", "--uncertain", "5", "--map-points", "0"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    html = out.read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="cluster-data">(.*?)</script>', html, re.S).group(1))["clusterings"][0]
    assert len(data["clusters"]) == 10 and all(len(c["tiles"]) == 11 for c in data["clusters"])
    assert len(data["uncertain"]) == 5 and all(len(data["images"][t["image"]][4]) == 3
                                               for c in data["clusters"] for t in c["tiles"])
    assert 'id="map"' not in html
    assert "ACC fit on train" in html


def test_overwrites_its_own_report_only(digits, tmp_path):
    report = write_report(digits)  # a second time: replaces the first
    assert report == digits / "report.html"
    other = tmp_path / "notes.html"
    other.write_text("<p>my notes</p>")
    with pytest.raises(NolabelError, match="not a nolabel report"):
        write_report(digits, out=other)
    assert other.read_text() == "<p>my notes</p>"
    write_report(digits, out=other, force=True)
    assert "nolabel report" in other.read_text()


def test_missing_dataset_still_renders(tmp_path):
    folder = image_folder(tmp_path / "gone", [f"{i}.png" for i in range(9)])
    store = pixel_store(tmp_path / "run" / "features" / "gone", f"images:{folder}")
    run_dir = cluster_run(tmp_path / "run", [store], k=3, pca_components=8)
    for image in folder.iterdir():
        image.unlink()
    folder.rmdir()
    html = write_report(run_dir).read_text(encoding="utf-8")
    assert "Montages left out: the dataset of train could not be loaded" in html
    data = json.loads(re.search(r'id="cluster-data">(.*?)</script>', html, re.S).group(1))["clusterings"][0]
    assert [c["size"] for c in data["clusters"]] and all(c["tiles"] == [] for c in data["clusters"])


def test_a_copied_run_folder_reports_its_own_clusterings(tmp_path):
    import shutil

    from nolabel.clustering import open_run_clustering
    from nolabel.report.collect import read_run

    original = digits_run(tmp_path / "original", k=10, n_train=300)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    digits_run(original, k=4, n_train=300)  # the original changed since the copy: 4 clusters where it had 10

    def clusters_shown() -> int:
        html = write_report(copy, map_points=0, progress=False).read_text(encoding="utf-8")
        return len(json.loads(re.search(r'id="cluster-data">(.*?)</script>', html, re.S).group(1))
                   ["clusterings"][0]["clusters"])

    assert read_run(copy).main.path == open_run_clustering(copy).path == copy / "cluster"
    assert clusters_shown() == 10
    shutil.rmtree(original)  # and with the original gone
    assert clusters_shown() == 10


def test_sweep_plots_and_training_curves_are_embedded(digits, tmp_path):
    sweep = digits / "sweep"
    sweep.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), "white").save(sweep / "sweep_acc_vs_k.png")
    (digits / "history.json").write_text(json.dumps([{"epoch": e, "loss": 2.0 / (e + 1), "acc": 0.1 * e}
                                                     for e in range(5)]))
    try:
        html = write_report(digits, out=tmp_path / "r.html").read_text(encoding="utf-8")
    finally:
        (sweep / "sweep_acc_vs_k.png").unlink()
        (digits / "history.json").unlink()
    assert "<figcaption>sweep/sweep_acc_vs_k.png</figcaption>" in html
    assert "<figcaption>training curves: history.json</figcaption>" in html
