"""The report's 2-D map, least typical and most uncertain images, and similar images: computed from
small real runs and checked in headless Chromium (hover, click, panel, escaping).

UMAP itself costs ~30 s of numba compiling in every test process, so the page's tests lay the map out
with `stand_in_umap`, and the tests of the real embedding are marked slow."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import report_helpers
from report_helpers import HOSTILE_NAMES, console_errors, digits_run, hostile_names_run, stand_in_umap

from nolabel import record
from nolabel.clustering import SourceAssignments, clustered_features, load_clustering, outliers
from nolabel.report import embedding, write_report
from nolabel.report.montage import pick_members
from nolabel.similar import similar

chromium, open_page = report_helpers.chromium, report_helpers.open_page  # the fixtures of the browser tests
UMAP = embedding._umap


quick_map, digits = report_helpers.quick_map, report_helpers.digits  # the module's map stand-in, a digits run


def page_data(report: Path) -> dict:
    html = report.read_text(encoding="utf-8")
    return json.loads(re.search(r'id="cluster-data">(.*?)</script>', html, re.S).group(1))


def isolated_point(mapped: dict) -> int:
    """The map point farthest from any other: hovering it cannot find a neighbour instead."""
    xy = np.stack([mapped["x"], mapped["y"]], axis=1)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return int(d.min(axis=1).argmax())


def point_offset(driver, i: int) -> tuple[int, int]:
    """Where map point i is drawn, as an offset from the canvas's centre (what ActionChains wants):
    positions fitted into the canvas less a 14 px margin, aspect kept, centred, y upwards."""
    x, y, w, h = driver.execute_script(
        "const m = JSON.parse(document.getElementById('cluster-data').textContent).map;"
        "const c = document.getElementById('map-canvas'); return [m.x, m.y, c.clientWidth, c.clientHeight]")
    scale = min((w - 28) / max(x), (h - 28) / max(y))
    left, top = (w - scale * max(x)) / 2, (h - scale * max(y)) / 2
    return round(left + x[i] * scale - w / 2), round(top + (max(y) - y[i]) * scale - h / 2)


def hover(driver, i: int, click: bool = False) -> None:
    """Move the mouse onto map point i (and click there)."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("css selector", "#map-canvas")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    actions = ActionChains(driver).move_to_element_with_offset(canvas, *point_offset(driver, i))
    (actions.click() if click else actions).perform()


# ---- the map --------------------------------------------------------------------------------------

def test_map_in_chromium_hover_shows_the_image_and_click_opens_its_cluster(digits, open_page):
    data = page_data(digits / "report.html")
    train = load_clustering(digits / "cluster").assignments["train"]
    mapped = data["map"]
    assert len(mapped["x"]) == len(train.cluster) == 1200  # all of them: fewer than map_points
    assert mapped["clusters"][0] == train.cluster.tolist()
    assert mapped["items"] == train.items
    assert min(mapped["x"]) == 0 and max(max(mapped["x"]), max(mapped["y"])) == 1

    driver = open_page(digits / "report.html", height=1100)
    assert console_errors(driver) == []
    note = driver.find_element("css selector", "#map .note").text
    assert "UMAP" in note and "all 1,200 train images" in note
    tip = driver.find_element("css selector", "#map-tip")
    assert tip.get_attribute("hidden") == "true"
    i = isolated_point(mapped)
    hover(driver, i)
    assert tip.get_attribute("hidden") is None
    assert tip.text == f"#{train.cluster[i]} · {train.items[i]}"
    shown = driver.execute_script(
        "const t = document.querySelector('#map-tip .thumb'); const s = getComputedStyle(t);"
        "return [s.backgroundImage.slice(0, 25), s.width, t.classList.contains('missing')]")
    assert shown == ['url("data:image/webp;base', "96px", False]

    hover(driver, i, click=True)
    opened = driver.find_element("css selector", f"#cluster-{train.cluster[i]}")
    assert "flash" in opened.get_attribute("class")
    assert driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return r.top < window.innerHeight && r.bottom > 0", opened)
    # the legend opens a cluster too, and marks it
    driver.find_element("xpath", "//div[@id='map-legend']/button[normalize-space()='#3']").click()
    assert "flash" in driver.find_element("css selector", "#cluster-3").get_attribute("class")
    assert driver.find_element("css selector", "#map-legend button.on").text == "#3"
    assert console_errors(driver) == []


def test_map_is_cached_with_a_record_and_recomputed_when_its_inputs_change(digits, tmp_path, monkeypatch):
    cache = digits / "report_map"
    first = record.read(cache)
    assert first["finished"] and first["stage"] == "report map"
    computed = []
    monkeypatch.setattr(embedding, "_umap", lambda *a: computed.append(a) or stand_in_umap(*a))
    write_report(digits, progress=False)  # the same report again: reused
    assert computed == []
    assert record.read(cache) == first
    assert "reused from report_map/" in (digits / "report.html").read_text(encoding="utf-8")

    # a sample: stated on the page, seeded, and a new record
    again = write_report(digits, out=tmp_path / "again.html", map_points=300, progress=False)
    assert len(computed) == 1
    data = page_data(again)
    assert len(data["map"]["x"]) == 300
    rows = embedding.sample_rows(1200, 300, 0)
    assert data["map"]["items"] == [load_clustering(digits / "cluster").assignments["train"].items[r] for r in rows]
    assert "a uniform random sample of 300 of the 1,200 train images (seed 0)" in again.read_text(encoding="utf-8")
    assert record.read(tmp_path / "again_map")["inputs"]["max_points"] == 300
    # a map of another definition of the clustering's space (an older version of it) is made again
    monkeypatch.setattr(embedding, "SPACE_VERSION", embedding.SPACE_VERSION + 1)
    write_report(digits, progress=False)
    assert len(computed) == 2 and record.read(cache)["inputs"]["space"] == embedding.SPACE_VERSION


@pytest.mark.slow
def test_umap_map_is_seeded_and_keeps_each_cluster_together(digits, tmp_path, monkeypatch):
    monkeypatch.setattr(embedding, "_umap", UMAP)  # the real one
    clustering = load_clustering(digits / "cluster")
    first = embedding.embed_map(clustering, "train", tmp_path / "first")
    second = embedding.embed_map(clustering, "train", tmp_path / "second")
    assert not first.cached and first.settings["metric"] == "cosine"
    np.testing.assert_array_equal(first.xy, second.xy)  # seeded: the same map again
    assert first.xy.min() == 0 and first.xy.max() == 1
    # UMAP keeps neighbourhoods: a point's 10 nearest on the map are mostly of its own cluster
    cluster = clustering.assignments["train"].cluster[first.rows]
    d = np.linalg.norm(first.xy[:, None] - first.xy[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :10]
    assert (cluster[nearest] == cluster[:, None]).mean() > 0.85  # 0.93 measured; 0.60 for the stand-in layout


def test_no_map_without_stored_features_and_none_when_turned_off(tmp_path):
    import shutil

    run_dir = digits_run(tmp_path / "run", n_train=300)
    shutil.rmtree(run_dir / "features" / "digits")  # the clustering's train features are gone
    html = write_report(run_dir, progress=False).read_text(encoding="utf-8")
    data = page_data(run_dir / "report.html")
    assert data["map"] is None and "No map: the clustering has no stored features" in html
    train = data["clusterings"][0]
    assert train["similar_note"] == "no similar images: the clustering has no stored features"
    assert all(image[4] == [] for image in train["images"])
    html = write_report(run_dir, out=tmp_path / "off.html", map_points=0, progress=False).read_text()
    assert 'id="map"' not in html and not (tmp_path / "off_map").exists()


# ---- least typical, most uncertain, similar --------------------------------------------------------

def test_pick_members_least_typical_are_the_farthest_and_never_repeat():
    rng = np.random.default_rng(2)
    cluster = rng.integers(0, 4, 200)
    distance = rng.random(200)
    members = pick_members(SourceAssignments(cluster, rng.random(200), distance, np.full(200, -1)), n_typical=3,
                           n_random=5, n_atypical=4)
    for c, chosen in members.items():
        rows = np.flatnonzero(cluster == c)
        by_distance = rows[np.argsort(distance[rows])]
        atypical = [m.row for m in chosen if m.kind == "atypical"]
        assert atypical == by_distance[::-1][:4].tolist()
        assert len({m.row for m in chosen}) == len(chosen) == 12
    few = pick_members(SourceAssignments(np.zeros(5, np.int64), np.ones(5), np.arange(5.0), np.full(5, -1)),
                       n_typical=3, n_random=2, n_atypical=4)[0]
    assert [(m.row, m.kind) for m in few] == [(0, "typical"), (1, "typical"), (2, "typical"), (4, "atypical"),
                                              (3, "atypical")]


def test_uncertain_images_and_similar_images_are_the_true_ones(digits, open_page):
    clustering = load_clustering(digits / "cluster")
    train = clustering.assignments["train"]
    data = page_data(digits / "report.html")["clusterings"][0]
    images = data["images"]
    # the 24 least confident images of the clustering, least confident first: outliers()' list
    assert [images[i][0] for i in data["uncertain"]] == [train.items[r] for r in np.argsort(train.confidence,
                                                                                            kind="stable")[:24]]
    assert [images[i][0] for i in data["uncertain"]] == [train.items[r] for r in
                                                         outliers(clustering, n_uncertain=24).uncertain]
    # each shown image's similar images are its 8 most cosine-similar in the clustering's space (PCA 16),
    # checked by brute force, and the very list `nolabel similar` gives
    x = clustered_features(clustering, "train")
    assert x.shape == (1200, 16)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    row_of = {name: i for i, name in enumerate(train.items)}
    shown = [t for c in data["clusters"] for t in c["tiles"]]
    assert len(shown) == 10 * 16 and {t["kind"] for t in shown} == {"typical", "atypical", "random"}
    for i, tile in enumerate(shown[::7]):
        row = row_of[tile["name"]]
        cosine = x @ x[row]
        cosine[row] = -np.inf
        expected = np.argsort(-cosine, kind="stable")[:8]
        found = [row_of[images[j][0]] for j in images[tile["image"]][4]]
        assert np.allclose(np.sort(cosine[found]), np.sort(cosine[expected]), atol=1e-5)
        assert [images[j][1] for j in images[tile["image"]][4]] == train.cluster[found].tolist()
        if i % 4 == 0:
            assert [n.row for n in similar(digits, tile["name"], k=8).neighbors] == found
    # the montages' typical and least typical members are outliers()' ends of each cluster
    found = outliers(clustering, n_per_cluster=8)
    for c in data["clusters"]:
        rows = {kind: [row_of[t["name"]] for t in c["tiles"] if t["kind"] == kind] for kind in ("typical", "atypical")}
        assert rows["typical"] == found.most_typical[c["id"]].tolist()
        assert rows["atypical"] == found.least_typical[c["id"]][:4].tolist()

    driver = open_page(digits / "report.html")
    figures = driver.find_elements("css selector", "#uncertain figure")
    assert len(figures) == 24
    assert figures[0].find_element("css selector", "figcaption").text.startswith(f"#{images[data['uncertain'][0]][1]}")
    # click an image of the browser: its similar images appear; clicking one opens its cluster
    tile = driver.find_element("css selector", "#cluster-list .cluster .tile")
    driver.execute_script("arguments[0].click()", tile)
    panel = driver.find_element("css selector", "#similar")
    assert panel.get_attribute("hidden") is None
    name = tile.get_attribute("title")
    assert panel.find_element("css selector", ".query .name").text == name
    found = panel.find_elements("css selector", ".found figure")
    assert len(found) == 8
    target = found[0].find_element("css selector", "figcaption").text
    found[0].click()
    assert "flash" in driver.find_element("css selector", f"#cluster-{target[1:]}").get_attribute("class")
    driver.find_element("css selector", "#similar .close").click()
    assert panel.get_attribute("hidden") == "true"
    assert console_errors(driver) == []


def test_hostile_names_in_the_map_and_the_similar_panel(tmp_path, open_page):
    run_dir = hostile_names_run(tmp_path, n_plain=27)
    report = write_report(run_dir, progress=False)
    html = report.read_text(encoding="utf-8")
    assert "<em class=injected>" not in html and 'onerror="window.pwned' not in html
    items = page_data(report)["map"]["items"]
    driver = open_page(report)
    assert console_errors(driver) == []
    for name in HOSTILE_NAMES:
        i = items.index(name)
        hover(driver, i)
        assert driver.find_element("css selector", "#map-tip .what").text.endswith(f" · {name}")
    tiles = driver.find_elements("css selector", "#cluster-list .tile")
    hostile = next(t for t in tiles if t.get_attribute("title") in HOSTILE_NAMES)
    driver.execute_script("arguments[0].click()", hostile)
    assert driver.find_element("css selector", "#similar .query .name").text == hostile.get_attribute("title")
    assert driver.execute_script("return document.querySelectorAll('.injected, img[src=x]').length") == 0
    assert driver.execute_script("return window.pwned === undefined")
    assert console_errors(driver) == []
