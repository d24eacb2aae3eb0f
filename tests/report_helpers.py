"""Headless Chromium for tests that open HTML pages, and small real runs to render reports of.

`chromium` is a session fixture: it installs the Debian packages `chromium` and `chromium-driver`
when they are missing (as root, with apt-get), and skips with the reason otherwise - or fails, when
the environment sets NOLABEL_REQUIRE_CHROMIUM=1 (CI does, in .ci/run, so these tests cannot quietly
stop running there). `open_page` gives a fresh selenium driver per test with the browser console log
captured.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
APT_PACKAGES = ["chromium", "chromium-driver"]
REQUIRE_ENV = "NOLABEL_REQUIRE_CHROMIUM"  # set (not "0"): no browser is a failure, not a skip


def _find_chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _apt_install() -> str | None:
    """Install the packages; return why not, or None on success."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "installing them needs root"
    install = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, capture_output=True, env=env).returncode == 0:
        return None
    subprocess.run(["apt-get", "update"], capture_output=True, env=env)
    done = subprocess.run(install, capture_output=True, text=True, env=env)
    return None if done.returncode == 0 else f"apt-get install failed: {done.stderr.strip()[-300:]}"


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(chromium binary, chromedriver binary), installing them if needed and allowed."""
    # Skipped without the browser, with the reason (pytest's -ra lists it); under
    # NOLABEL_REQUIRE_CHROMIUM=1 (CI) a missing browser or selenium fails instead.
    give_up = pytest.fail if os.environ.get(REQUIRE_ENV, "") not in ("", "0") else pytest.skip
    try:
        import selenium  # noqa: F401
    except ImportError:
        give_up("selenium is not installed (pip install -e .[test])")
    found = _find_chromium()
    if found is None:
        why = _apt_install()
        found = _find_chromium()
        if found is None:
            give_up(f"headless Chromium is needed to open the report: packages {' '.join(APT_PACKAGES)} "
                    f"are missing and {why or 'did not provide chromium and chromedriver'}")
    return found


@pytest.fixture(scope="module", autouse=True)
def quick_map():
    """In a module that takes this fixture into its namespace, the reports its tests write lay their
    map out without UMAP (`stand_in_map`)."""
    with stand_in_map():
        yield


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A digits run folder (`digits_run`) with its report written."""
    from nolabel.report import write_report

    run_dir = tmp_path_factory.mktemp("digits-run")
    digits_run(run_dir)
    write_report(run_dir, progress=False)
    return run_dir


@pytest.fixture
def open_page(chromium, tmp_path_factory):
    """`open_page(path, width=1400, height=1000)` -> a selenium driver showing the file."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def open_(path: Path, width: int = 1400, height: int = 1000):
        options = webdriver.ChromeOptions()
        options.binary_location = chromium[0]
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp())}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromium[1]))
        drivers.append(driver)
        driver.get(Path(path).resolve().as_uri())
        return driver

    yield open_
    for driver in drivers:
        driver.quit()


def stand_in_umap(x: np.ndarray, settings: dict, seed: int) -> np.ndarray:
    """The report map's layout for tests of the page rather than of UMAP (which costs ~30 s of numba
    compiling in every test process): the clustered space's first two coordinates."""
    return x[:, :2].copy()


@contextlib.contextmanager
def stand_in_map():
    """Reports written inside lay their map out with `stand_in_umap`."""
    from nolabel.report import embedding

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedding, "_umap", stand_in_umap)
        yield


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def full_page_screenshot(driver, path: Path, width: int = 1400, max_height: int = 6000) -> Path:
    """Resize the window to the page's height (capped) and save a PNG."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height) + 20, max_height))
    driver.save_screenshot(str(path))
    return path


def cluster_run(run_dir: Path, stores, k: int, name: str = "test-run", method: str = "pixels + PCA + k-means",
                pca_components: int = 16):
    """A run folder as `nolabel run` lays it out: features/, cluster/ (the real pipeline), summary.json."""
    from nolabel.config import KMeansConfig, PCAConfig
    from nolabel.io import write_json
    from nolabel.cluster.pca_kmeans import cluster_stores

    cluster_dir = run_dir / "cluster"
    results = cluster_stores(stores[0], stores[1:], cluster_dir, pca=PCAConfig(n_components=pca_components),
                             kmeans=KMeansConfig(n_clusters=k, max_iter=20), progress=False)
    sources = []
    for source_name, entry in results.items():
        if source_name.startswith("_"):
            continue
        scored = entry.get("fit_on_eval")
        sources.append({"name": source_name, "data": "?", "n": entry["n"],
                        "metrics": {m: scored[m] for m in ("acc", "nmi", "ari", "ami")} if scored else None,
                        "metrics_fit_on_train": entry.get("fit_on_train")})
    for source, store in zip(sources, stores):
        source["data"] = store.manifest["dataset"]
    write_json(run_dir / "summary.json", {
        "name": name, "folder": str(run_dir),
        "primary": str(cluster_dir),
        "rows": [{"method": method, "folder": str(cluster_dir), "sources": sources,
                  "protocol": "hungarian mapping fitted on each evaluated set; NMI/AMI arithmetic"}],
        "timings_seconds": {"features": 1.25, "cluster": 0.5}})
    (run_dir / "config.yaml").write_text(f"name: {name}\nkmeans:\n  n_clusters: {k}\n", encoding="utf-8")
    return run_dir


def digits_run(run_dir: Path, k: int = 10, n_train: int = 1200) -> Path:
    """Raw digits pixels, train = the first `n_train` images, eval = the rest; PCA 16 + k-means."""
    from nolabel.data import load
    from nolabel.store import write_store

    ds = load("digits")
    pixels = ds.images.reshape(len(ds), -1).astype(np.float32) / 255
    manifest = {"dataset": "digits", "model": "pixels", "weights": None, "classes": ds.classes,
                "transform": {"resize": 8, "crop": 8}, "seconds": 0.1, "images_per_second": 17970.0}
    parts = {"digits": slice(0, n_train), "digits_eval": slice(n_train, len(ds))}
    stores = [write_store(run_dir / "features" / folder, pixels[rows], ds.labels[rows], ds.item_names[rows],
                          manifest) for folder, rows in parts.items()]
    return cluster_run(run_dir, stores, k)


HOSTILE_NAMES = ['<img src=x onerror="window.pwned=1">.png', "<em class=injected>x<em>.png", 'a & "b".png']


def image_folder(root: Path, names: list[str], seed: int = 0) -> Path:
    """Small RGB PNGs in three colour families, so k-means on their pixels finds three groups."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i, name in enumerate(names):
        base = np.zeros(3)
        base[i % 3] = 200
        pixels = np.clip(base + rng.normal(0, 25, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / name)
    return root


def pixel_store(path: Path, spec: str):
    """A feature store of a dataset's raw pixels, as the extractor would write it."""
    from nolabel.data import load
    from nolabel.store import write_store

    ds = load(spec)
    pixels = np.stack([np.asarray(ds[i][0].resize((8, 8)), np.float32).ravel() / 255 for i in range(len(ds))])
    return write_store(path, pixels, ds.labels, ds.item_names,
                       {"dataset": spec, "model": "pixels", "classes": ds.classes, "seconds": 0.01})


def hostile_names_run(tmp_path: Path, n_plain: int) -> Path:
    """A clustered unlabelled folder whose file names are HTML (HOSTILE_NAMES) among `n_plain` plain ones."""
    names = HOSTILE_NAMES + [f"plain-{i}.png" for i in range(n_plain)]
    folder = image_folder(tmp_path / "photos", names)
    store = pixel_store(tmp_path / "run" / "features" / "photos", f"images:{folder}")
    return cluster_run(tmp_path / "run", [store], k=3, pca_components=8)
