import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from nolabel.cluster.neighbors import load_neighbors, mine_neighbors, neighbor_purity, save_neighbors
from nolabel.errors import NolabelError


def _features(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.5, 3, size=(n, 1)).astype(np.float32)


def test_matches_brute_force_cosine_neighbours_of_sklearn():
    x = _features()
    ours = mine_neighbors(x, n_neighbors=7)
    ref = NearestNeighbors(n_neighbors=8, metric="cosine", algorithm="brute").fit(x).kneighbors(x)[1][:, 1:]
    assert ours.shape == (300, 7) and ours.dtype == np.int64
    np.testing.assert_array_equal(ours, ref)


def test_chunked_search_equals_one_chunk():
    x = _features(257)
    whole = mine_neighbors(x, n_neighbors=5)
    chunked = mine_neighbors(x, n_neighbors=5, query_chunk=31, db_chunk=50)
    np.testing.assert_array_equal(chunked, whole)


def test_self_is_excluded_even_with_duplicates():
    x = _features(50)
    x[10] = x[11]  # exact duplicates: each must list the other, never itself
    nb = mine_neighbors(x, n_neighbors=3)
    assert not (nb == np.arange(50)[:, None]).any()
    assert nb[10, 0] == 11 and nb[11, 0] == 10


def test_purity_hand_computed():
    neighbors = np.array([[1, 2], [0, 2], [0, 1], [0, 1]])
    labels = np.array([0, 0, 1, -1])
    # anchor 0: (0,0) ok, (0,1) no; anchor 1: ok, no; anchor 2: no, no; anchor 3 unknown
    assert neighbor_purity(neighbors, labels) == pytest.approx(2 / 6)
    assert neighbor_purity(neighbors, labels, k=1) == pytest.approx(2 / 3)


def test_save_and_load_roundtrip_and_checks(tmp_path):
    nb = mine_neighbors(_features(40), n_neighbors=4)
    path = save_neighbors(tmp_path / "neighbors.npy", nb)
    np.testing.assert_array_equal(load_neighbors(path, n=40), nb)
    with pytest.raises(NolabelError, match="rows"):
        load_neighbors(path, n=41)
    with pytest.raises(NolabelError, match="not found"):
        load_neighbors(tmp_path / "missing.npy")
    with pytest.raises(NolabelError, match="n_neighbors must be"):
        mine_neighbors(_features(5), n_neighbors=5)
