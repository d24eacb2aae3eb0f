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
    assert labelled["selected"]["score"] == max(r["label_free"]["consensus"] for r in labelled["rows"]
                                                 if r["n_clusters"] == labelled["selected"]["n_clusters"])
    assert read_json(tmp_path / "labelled" / "select" / "scores.json")["chosen"] == chosen["method"]


def test_select_settings_criterion_and_report(tmp_path, digit_folders):
    from nolabel.report import write_report

    summary = _run(f"folder:{digit_folders}", tmp_path / "r", "select.criterion=davies_bouldin",
                   "select.k_criterion=silhouette")
    selected = summary["selected"]
    # K from the best silhouette over all candidates, then the lowest Davies-Bouldin among that K's
    assert selected["n_clusters"] == max(summary["rows"], key=lambda r: r["label_free"]["silhouette"])["n_clusters"]
    assert selected["score"] == min(r["label_free"]["davies_bouldin"] for r in summary["rows"]
                                    if r["n_clusters"] == selected["n_clusters"])
    html = write_report(tmp_path / "r", progress=False).read_text(encoding="utf-8")
    assert "Choosing without labels" in html
    assert f"K = {selected['n_clusters']} chosen by silhouette" in html and "chosen by davies bouldin" in html
    assert '<tr class="chosen">' in html
    # unchanged settings: every stage, the choice included, is up to date
    logs = []
    run(load_config(None, [SELECT[0].format(f"folder:{digit_folders}"), *SELECT[1:],
                           "select.criterion=davies_bouldin", "select.k_criterion=silhouette"]), tmp_path / "r",
        progress=False, log=logs.append)
    assert any(line == "select: up to date" for line in logs)


def test_mean_rank_and_choose():
    scores = {"a": {"silhouette": 0.2, "davies_bouldin": 1.0}, "b": {"silhouette": 0.1, "davies_bouldin": 0.5},
              "c": {"silhouette": 0.3, "davies_bouldin": 2.0}}
    ranks = select.rank_means(scores)
    # a beats b on silhouette, c on Davies-Bouldin: 0.5 and 0.5; b: 0 and 1; c: 1 and 0
    assert ranks == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert select.choose(scores, "silhouette") == "c" and select.choose(scores, "davies_bouldin") == "b"
    with pytest.raises(NolabelError, match="finite"):
        select.choose({"a": {"silhouette": float("nan")}, "b": {"silhouette": float("nan")}}, "silhouette")
    assert select.choose({"a": {"mean_rank": float("nan")}}, "mean_rank") == "a"  # a lone candidate


def test_k_first_then_the_criterion_within_that_k():
    """K from the best candidate by k_criterion over all; then criterion among that K's candidates, ties
    broken by k_criterion; consensus is computed within each K."""
    scores = {"a10": {"consensus": 0.5, "mean_rank": 0.9}, "b10": {"consensus": 0.7, "mean_rank": 0.2},
              "c20": {"consensus": 0.9, "mean_rank": 0.6}, "d20": {"consensus": 0.9, "mean_rank": 0.7}}
    ks = {"a10": 10, "b10": 10, "c20": 20, "d20": 20}
    # mean_rank's best (a10) sets K = 10; consensus then prefers b10 although c20 / d20 score higher
    assert select.choose_clustering(scores, ks, "consensus", "mean_rank") == "b10"
    # one K: the criterion alone; a tie (two candidates of a K agree equally) goes to k_criterion
    assert select.choose_clustering({n: scores[n] for n in ("c20", "d20")}, {"c20": 20, "d20": 20},
                                    "consensus", "mean_rank") == "d20"
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 200)
    b, c, d = a.copy(), rng.integers(0, 3, 200), rng.integers(0, 5, 200)
    b[:20] = (b[:20] + 1) % 3
    within = select.consensus_within_k({"a": a, "b": b, "c": c, "d": d}, {"a": 3, "b": 3, "c": 3, "d": 5})
    expected = select.consensus({"a": a, "b": b, "c": c})
    assert {n: within[n] for n in "abc"} == expected and np.isnan(within["d"])


def test_select_config_errors():
    with pytest.raises(NolabelError, match="number, a list of numbers or auto"):
        load_config(None, ["select.n_clusters=some"])
    with pytest.raises(NolabelError, match="select.criterion"):
        load_config(None, ["select.criterion=magic"])
    with pytest.raises(NolabelError, match="add a scan section"):
        load_config(None, ["select.methods=[kmeans, scan]"])
    assert load_config(None, ["select.n_clusters=auto"]).select.candidate_ks() == [5, 10, 15, 20, 30]
