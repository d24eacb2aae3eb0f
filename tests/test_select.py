"""The label-free choice in `nolabel run`: candidates over spaces x K, scored without labels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nolabel import select
from nolabel.config import load_config
from nolabel.errors import NolabelError
from nolabel.io import read_json
from nolabel.pipeline import run

SELECT = ["data.train={}", "select.spaces=[pixels@8, pixels@16]", "select.n_clusters=[5, 10]",
          "select.sample_size=500", "extract.batch_size=256", "baseline.enabled=false", "report=false"]


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    """scikit-learn's digits as PNG files in class folders: `folder:` reads the labels, `images:` the same
    files in the same order without them."""
    from nolabel.data import load

    root = tmp_path_factory.mktemp("digits") / "classes"
    digits = load("digits")
    for i, (pixels, label) in enumerate(zip(digits.images, digits.labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / str(label) / f"{i:04d}.png")
    return root


def _run(spec: str, out, *more: str):
    return run(load_config(None, [SELECT[0].format(spec), *SELECT[1:], *more]), out, progress=False,
               log=lambda line: None)


def test_the_choice_is_the_same_with_and_without_labels(tmp_path, digit_folders):
    labelled = _run(f"folder:{digit_folders}", tmp_path / "labelled")
    unlabelled = _run(f"images:{digit_folders}", tmp_path / "unlabelled")
    assert labelled["selected"]["method"] == unlabelled["selected"]["method"]
    assert labelled["selected"]["score"] == unlabelled["selected"]["score"]
    assert [r["label_free"] for r in labelled["rows"]] == [r["label_free"] for r in unlabelled["rows"]]
    assert labelled["rows"][0]["sources"][0]["metrics"] and not unlabelled["rows"][0]["sources"][0]["metrics"]
    # one row per candidate (2 spaces x 2 K), each with its label-free scores; the choice is the primary
    assert len(labelled["rows"]) == 4 and all(set(r["label_free"]) >= set(select.ALL) for r in labelled["rows"])
    chosen = next(r for r in labelled["rows"] if r["method"] == labelled["selected"]["method"])
    assert labelled["primary"] == chosen["folder"]
    assert labelled["selected"]["score"] == max(r["label_free"]["silhouette"] for r in labelled["rows"])
    assert read_json(tmp_path / "labelled" / "select" / "scores.json")["chosen"] == chosen["method"]


def test_select_settings_criterion_and_report(tmp_path, digit_folders):
    from nolabel.report import write_report

    summary = _run(f"folder:{digit_folders}", tmp_path / "r", "select.criterion=davies_bouldin")
    assert summary["selected"]["score"] == min(r["label_free"]["davies_bouldin"] for r in summary["rows"])
    html = write_report(tmp_path / "r", progress=False).read_text(encoding="utf-8")
    assert "Choosing without labels" in html and "Chosen by davies bouldin" in html
    assert '<tr class="chosen">' in html
    # unchanged settings: every stage, the choice included, is up to date
    logs = []
    run(load_config(None, [SELECT[0].format(f"folder:{digit_folders}"), *SELECT[1:],
                           "select.criterion=davies_bouldin"]), tmp_path / "r", progress=False, log=logs.append)
    assert any(line == "select: up to date" for line in logs)


def test_mean_rank_and_choose():
    scores = {"a": {"silhouette": 0.2, "davies_bouldin": 1.0}, "b": {"silhouette": 0.1, "davies_bouldin": 0.5},
              "c": {"silhouette": 0.3, "davies_bouldin": 2.0}}
    ranks = select.rank_means(scores)
    # a beats b on silhouette, c on Davies-Bouldin: 0.5 and 0.5; b: 0 and 1; c: 1 and 0
    assert ranks == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert select.choose(scores, "silhouette") == "c" and select.choose(scores, "davies_bouldin") == "b"
    with pytest.raises(NolabelError, match="finite"):
        select.choose({"a": {"silhouette": float("nan")}}, "silhouette")


def test_select_config_errors():
    with pytest.raises(NolabelError, match="number, a list of numbers or auto"):
        load_config(None, ["select.n_clusters=some"])
    with pytest.raises(NolabelError, match="select.criterion"):
        load_config(None, ["select.criterion=magic"])
    with pytest.raises(NolabelError, match="add a scan section"):
        load_config(None, ["select.methods=[kmeans, scan]"])
    assert load_config(None, ["select.n_clusters=auto"]).select.candidate_ks() == [5, 10, 15, 20, 30]
