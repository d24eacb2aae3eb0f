"""Label-free scores (nolabel.select), each against an independent reference."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_mutual_info_score, davies_bouldin_score, silhouette_score
from sklearn.neighbors import NearestNeighbors

from nolabel import select
from nolabel.errors import NolabelError


def blobs(n: int, d: int, k: int, spread: float, seed: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows around k random directions; spread = noise scale (small: well separated)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = np.arange(n) % k
    rng.shuffle(y)
    x = centres[y] + spread * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype), y


def random_ids(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 99]).integers(0, k, n)


# ---------------------------------------------------------------- silhouette, Davies-Bouldin


@pytest.mark.parametrize("seed", range(4))
def test_silhouette_equals_sklearn_cosine_on_the_same_sample(seed):
    x, _ = blobs(500, 7, 6, spread=0.8, seed=seed)
    x[::50] *= 3.0  # rows of other norms: cosine ignores them
    labels = random_ids(500, 6, seed) if seed % 2 else blobs(500, 7, 6, 0.8, seed)[1]
    labels[3] = 17  # a cluster of one row (its silhouette is 0) when it is sampled
    for sample_size, random_state in ((200, seed), (499, 5), (None, 0)):
        rows = select.sample_rows(500, sample_size, random_state)
        expected = silhouette_score(x[rows], labels[rows], metric="cosine")
        got = select.silhouette(x, labels, sample_size=sample_size, random_state=random_state)
        assert got == pytest.approx(expected, abs=1e-12)
    assert len(select.sample_rows(500, 200, seed)) == 200
    assert np.array_equal(select.sample_rows(500, None, 0), np.arange(500))


def test_silhouette_float32_zero_rows_and_undefined_cases():
    x, y = blobs(300, 5, 4, spread=0.6, seed=1, dtype=np.float32)
    x[7] = 0  # a zero row: cosine similarity 0 with every row, distance 0 to itself
    expected = silhouette_score(x, y, metric="cosine")
    assert select.silhouette(x, y, sample_size=None) == pytest.approx(expected, abs=2e-6)
    assert math.isnan(select.silhouette(x, np.zeros(300, int), sample_size=None))  # one cluster
    assert math.isnan(select.silhouette(x[:5], np.arange(5), sample_size=None))   # K = N


def test_davies_bouldin_equals_sklearn():
    x, y = blobs(400, 6, 5, spread=0.9, seed=3)
    for labels in (y, random_ids(400, 7, 3), y + 100):
        assert select.davies_bouldin(x, labels) == pytest.approx(davies_bouldin_score(x, labels), rel=1e-12)
    assert math.isnan(select.davies_bouldin(x, np.ones(400, int)))
    assert select.SCORES["davies_bouldin"].higher_is_better is False
    assert all(select.SCORES[s].higher_is_better for s in select.SCORES if s != "davies_bouldin")


# ---------------------------------------------------------------- k-NN consistency


def test_knn_consistency_equals_a_hand_computation_with_sklearn_neighbors():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((240, 6))
    labels = (x[:, 0] > 0).astype(int) * 2 + (rng.random(240) < 0.3)  # partly feature-driven ids
    k = 7
    for sample_size in (60, None):
        rows = select.sample_rows(240, sample_size, 2)
        nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x)
        idx = nn.kneighbors(x[rows], return_distance=False)
        assert np.array_equal(idx[:, 0], rows)  # no duplicates: the row itself comes first
        shares = [(labels[idx[i, 1:]] == labels[r]).mean() for i, r in enumerate(rows)]
        got = select.knn_consistency(x, labels, n_neighbors=k, sample_size=sample_size, random_state=2)
        assert got == pytest.approx(np.mean(shares), abs=1e-12)


def test_knn_consistency_excludes_the_row_itself_among_duplicates():
    x = np.repeat(np.eye(3), 4, axis=0)  # 3 groups of 4 identical rows
    labels = np.repeat([0, 1, 2], 4)
    labels[0] = 5  # row 0 alone in its cluster: its 3 duplicates are all in cluster 0
    got = select.knn_consistency(x, labels, n_neighbors=3, sample_size=None)
    # rows 1-3: 2 of their 3 neighbours share their id; rows 0: none; the 8 others: all
    assert got == pytest.approx((3 * 2 / 3 + 0 + 8) / 12)


# ---------------------------------------------------------------- balance


def test_balance_by_hand():
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert select.balance([0, 0, 0, 1]) == pytest.approx(h / math.log(2))
    assert select.balance([0, 0, 0, 1], n_clusters=4) == pytest.approx(h / math.log(4))
    assert select.balance([3, 1, 2, 3, 1, 2]) == pytest.approx(1.0)
    assert select.balance([4, 4, 4], n_clusters=5) == 0.0
    assert select.balance([4, 4, 4]) == 0.0
    with pytest.raises(NolabelError):
        select.balance([0, 1, 2], n_clusters=2)


# ---------------------------------------------------------------- generalization


def test_generalization_high_for_separable_clusters_and_chance_for_random_ids():
    x, y = blobs(1000, 8, 5, spread=0.15, seed=5)
    assert select.generalization(x, y) >= 0.98
    chance = select.generalization(x, random_ids(1000, 5, 5))
    assert 0.1 < chance < 0.35  # chance is 0.2


def test_generalization_matches_sklearn_logistic_regression_on_the_same_folds():
    x, y = blobs(900, 6, 4, spread=0.9, seed=6)  # overlapping: accuracy well below 1
    labels = y.copy()
    labels[::7] = random_ids(900, 4, 6)[::7]
    rows = select.sample_rows(900, None, 3)
    folds = np.array_split(select._rng(3, select._FOLDS).permutation(rows), 5)
    accuracies = []
    for f, test in enumerate(folds):
        train = np.concatenate([g for i, g in enumerate(folds) if i != f])
        model = LogisticRegression(C=1.0, max_iter=1000, tol=1e-8).fit(x[train], labels[train])
        accuracies.append(model.score(x[test], labels[test]))
    got = select.generalization(x, labels, sample_size=None, random_state=3)
    assert 0.4 < got < 0.95
    assert got == pytest.approx(np.mean(accuracies), abs=0.01)


# ---------------------------------------------------------------- stability


def test_stability_high_for_true_blobs_low_for_random_ids():
    x, y = blobs(1200, 8, 4, spread=0.2, seed=7)
    assert select.stability(x, y) > 0.9
    assert select.stability(x, random_ids(1200, 4, 7)) < 0.1


# ---------------------------------------------------------------- across spaces


@pytest.fixture(scope="module")
def two_spaces():
    x, y = blobs(800, 8, 4, spread=0.5, seed=8)
    noisy, _ = blobs(800, 16, 4, spread=3.0, seed=9)
    return {"clear": x, "noisy": noisy.astype(np.float32)}, y


def test_score_clustering_is_the_mean_of_per_space_values(two_spaces):
    spaces, y = two_spaces
    options = dict(sample_size=500, random_state=2)
    result = select.score_clustering(y, spaces, **options)
    assert set(result["scores"]) == set(select.SCORES) == set(select.ALL)
    calls = {
        "silhouette": lambda x: select.silhouette(x, y, **options),
        "knn_consistency": lambda x: select.knn_consistency(x, y, **options),
        "generalization": lambda x: select.generalization(x, y, **options),
        "davies_bouldin": lambda x: select.davies_bouldin(x, y),
        "balance": lambda x: select.balance(y),
        "stability": lambda x: select.stability(x, y, **options),
    }
    for name, entry in result["scores"].items():
        assert entry["per_space"] == {space: calls[name](x) for space, x in spaces.items()}
        assert entry["mean"] == pytest.approx(np.mean(list(entry["per_space"].values())), abs=0)
        assert entry["higher_is_better"] == select.SCORES[name].higher_is_better
        assert set(result["seconds"][name]) == set(spaces)
    assert result["n"] == 800 and result["n_clusters"] == 4 and result["sample_size"] == 500
    assert result["seconds_total"] >= 0


def test_score_clustering_deterministic_and_cache_changes_nothing(two_spaces):
    spaces, y = two_spaces
    labels = y.copy()
    labels[:200] = random_ids(200, 4, 1)
    first = select.score_clustering(labels, spaces, sample_size=400, random_state=5)
    again = select.score_clustering(labels, spaces, sample_size=400, random_state=5)
    cache: dict = {}
    cached = [select.score_clustering(labels, spaces, sample_size=400, random_state=5, cache=cache)
              for _ in range(2)]
    assert len(cache) == 2 * len(spaces)  # k-NN and stability k-means, per space
    for result in (again, *cached):
        assert result["scores"] == first["scores"]
    other = select.score_clustering(labels, spaces, sample_size=400, random_state=6,
                                    scores=["silhouette", "balance"])
    assert set(other["scores"]) == {"silhouette", "balance"}
    assert other["scores"]["balance"] == first["scores"]["balance"]  # not sampled
    # a changed array under the same name is not served the cached neighbours
    changed = dict(spaces, clear=spaces["clear"][::-1].copy())
    fresh = select.score_clustering(labels, changed, sample_size=400, random_state=5, scores=["knn_consistency"])
    served = select.score_clustering(labels, changed, sample_size=400, random_state=5, scores=["knn_consistency"],
                                     cache=cache)
    assert served["scores"] == fresh["scores"]


def test_no_function_takes_labels():
    forbidden = {"labels", "labels_true", "y", "y_true", "target", "targets", "classes", "ground_truth"}
    for function in [s.function for s in select.SCORES.values()] + [select.score_clustering, select.consensus]:
        assert not forbidden & set(inspect.signature(function).parameters), function.__name__
    spaces, y = {"a": blobs(100, 4, 2, 0.5, 0)[0]}, blobs(100, 4, 2, 0.5, 0)[1]
    with pytest.raises(TypeError):
        select.score_clustering(y, spaces, labels_true=y)  # type: ignore[call-arg]


def test_input_errors():
    x, y = blobs(50, 4, 2, 0.5, 0)
    with pytest.raises(NolabelError):
        select.score_clustering(y[:-1], {"a": x})
    with pytest.raises(NolabelError):
        select.score_clustering(y, {"a": x}, scores=["accuracy"])
    with pytest.raises(NolabelError):
        select.score_clustering(y, {})
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NolabelError):
        select.silhouette(bad, y)
    with pytest.raises(NolabelError):
        select.silhouette(x, y, random_state=-1)


# ---------------------------------------------------------------- consensus


def test_consensus_is_the_mean_ami_with_the_others():
    _, y = blobs(600, 4, 5, 0.5, 10)
    clusterings = {"a": y, "a-renamed": (y + 3) % 5 * 10, "b": random_ids(600, 5, 10), "c": y // 2}
    got = select.consensus(clusterings)
    for name, labels in clusterings.items():
        others = [adjusted_mutual_info_score(labels, other) for o, other in clusterings.items() if o != name]
        assert got[name] == pytest.approx(np.mean(others), abs=1e-9)
    assert got["a"] == pytest.approx(got["a-renamed"])
    assert math.isnan(select.consensus({"only": y})["only"])
