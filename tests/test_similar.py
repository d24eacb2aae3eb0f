"""`nolabel similar`: a run's images nearest to one of its images or to a new image file."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from nolabel.cli import main
from nolabel.cluster.neighbors import search_neighbors
from nolabel.clustering import assign, clustered_features, clustered_space, clustering_pca, open_run_clustering
from nolabel.errors import NolabelError
from nolabel.similar import similar
from photo_fixtures import make_read_only, make_run, make_writable, write_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("similar") / "my photos"
    write_photos(root)
    shutil.copyfile(root / "red things" / "img 1.png", root / "red things" / "sub dir" / "only here.png")
    run_dir = make_run(root.parent / "run", f"images:{root}")
    make_read_only(root)
    yield root, run_dir
    make_writable(root)


def _cosine_ranking(features: np.ndarray, query: np.ndarray) -> np.ndarray:
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    return np.argsort(-(x @ (query / np.linalg.norm(query))), kind="stable")


def test_an_image_of_the_run_by_path_name_or_file_name(photos):
    root, run_dir = photos
    clustering = open_run_clustering(run_dir)
    assert clustering_pca(clustering).n_components_ == 8  # the space searched: the clustering's PCA
    assigned, features = clustering.assignments["train"], clustered_features(clustering, "train").astype(np.float64)
    item = "grün/ünïcode ✓.png"
    row = assigned.items.index(item)
    found = similar(run_dir, root / item, k=5)
    assert (found.row, found.cluster) == (row, assigned.cluster[row])
    rows = [n.row for n in found.neighbors]
    assert rows == [r for r in _cosine_ranking(features, features[row]) if r != row][:5]  # itself left out
    assert [n.rank for n in found.neighbors] == [1, 2, 3, 4, 5]
    assert all(n.item.startswith("grün/") and n.path == str(root / n.item) for n in found.neighbors)
    similarities = [n.similarity for n in found.neighbors]
    assert similarities == sorted(similarities, reverse=True)
    # the same image named as in the dataset, or by a file name no other image has
    assert similar(run_dir, item, k=5).neighbors == found.neighbors
    assert similar(run_dir, "only here.png", k=1).row == assigned.items.index("red things/sub dir/only here.png")
    # one backbone's features given as the list of one that every kind of clustering takes
    (store,) = clustering.stores("train")
    np.testing.assert_array_equal(assign(clustering, [store])[0], assigned.cluster)
    np.testing.assert_array_equal(clustered_space(clustering, [store.features]),
                                  clustered_features(clustering, "train"))
    with pytest.raises(NolabelError, match="features of one backbone, got 2"):
        assign(clustering, [store, store])


def test_names_that_find_no_single_image_are_errors(photos, tmp_path):
    _, run_dir = photos
    with pytest.raises(NolabelError, match="names 3 images of the run"):
        similar(run_dir, "plain.jpg")
    with pytest.raises(NolabelError, match="neither an image file nor the name"):
        similar(run_dir, "nowhere.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(NolabelError, match="bad image"):
        similar(run_dir, tmp_path / "broken.png")
    with pytest.raises(NolabelError, match="k must be at least 1"):
        similar(run_dir, "grün/plain.jpg", k=0)


def test_an_image_the_run_never_saw(photos, tmp_path):
    root, run_dir = photos
    copy = tmp_path / "elsewhere" / "copy of plain.jpg"
    copy.parent.mkdir()
    shutil.copyfile(root / "red things" / "plain.jpg", copy)
    assigned = open_run_clustering(run_dir).assignments["train"]
    original = assigned.items.index("red things/plain.jpg")
    found = similar(run_dir, copy, k=3)
    assert found.row is None and found.cluster == assigned.cluster[original]
    assert found.neighbors[0].row == original and found.neighbors[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert len(found.neighbors) == 3
    # measured in the clustering's space, as for the run's own images: the copy's similarities are the original's
    x = clustered_features(open_run_clustering(run_dir), "train").astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose([n.similarity for n in found.neighbors], x[[n.row for n in found.neighbors]]
                               @ x[original], atol=1e-5)
    assert [n.row for n in found.neighbors[1:]] == [n.row for n in similar(run_dir, "red things/plain.jpg",
                                                                           k=2).neighbors]


def test_command_line_prints_ranked_paths(photos, capsys):
    root, run_dir = photos
    assert main(["similar", str(run_dir), str(root / "-blue" / "-rf leading dash.png"), "-k", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "one of the run's images" in lines[0] and lines[1].split() == ["rank", "similarity", "cluster", "path"]
    assert len(lines) == 2 + 4 and all(str(root / "-blue") in line for line in lines[2:])


def test_search_neighbors_matches_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    database, queries = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    similarity, found = search_neighbors(database, queries, 10, db_chunk=64, query_chunk=3)
    x = database / np.linalg.norm(database, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(similarity, np.take_along_axis(q @ x.T, expected, 1), atol=1e-5)
    assert search_neighbors(database[:4], queries, 10)[1].shape == (7, 4)  # never more than the database holds


def test_search_neighbors_leaves_out_each_querys_own_row():
    rng = np.random.default_rng(1)
    database = rng.normal(size=(50, 8)).astype(np.float32)
    database[7] = database[3]  # an exact duplicate of row 3
    rows = np.array([3, 10, 7, -1])
    queries = np.concatenate([database[rows[:3]], rng.normal(size=(1, 8)).astype(np.float32)])
    similarity, found = search_neighbors(database, queries, 5, exclude=rows, db_chunk=16)
    assert found.shape == similarity.shape == (4, 5)
    for q, row in enumerate(rows):
        expected = [r for r in search_neighbors(database, queries[q:q + 1], 6)[1][0] if r != row][:5]
        assert found[q].tolist() == expected and row not in found[q]
    assert {found[0][0], found[2][0]} == {7, 3}  # each duplicate finds the other first
    assert search_neighbors(database[:3], queries[:1], 10, exclude=rows[:1])[1].shape == (1, 2)
    with pytest.raises(NolabelError, match="one row per query"):
        search_neighbors(database, queries, 5, exclude=rows[:2])


def test_a_turtle_run_is_searched_in_its_spaces_for_its_images_and_new_ones(photos, tmp_path):
    from nolabel.cluster.pca import PCA
    from nolabel.report.embedding import embed_map

    root, _ = photos
    run_dir = make_run(tmp_path / "turtle run", f"images:{root}", settings=(
        "turtle.spaces=[pixels@16]", "turtle.pca=4", "turtle.steps=20", "turtle.n_restarts=1",
        "turtle.outer_lr=0.01", "turtle.inner_lr=0.01", "turtle.device=cpu"))
    clustering = open_run_clustering(run_dir)
    assert clustering.method == "TURTLE"
    stores = clustering.stores("train")
    assert [store.dim for store in stores] == [8 * 8 * 3, 16 * 16 * 3]  # the run's backbone, then pixels@16
    # the space: each backbone through TURTLE's PCA of it; two images' similarity is the mean of their
    # cosine similarities in the two spaces
    turtle_dir = clustering.path / clustering.info["assign"]["turtle"]
    cosines = []
    for i, store in enumerate(stores):
        z = PCA.load(turtle_dir / f"pca_{i}.npz").transform(store.features).astype(np.float64)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        cosines.append(z @ z.T)
    x = clustered_features(clustering, "train").astype(np.float64)
    assert x.shape == (len(stores[0].items), 8)
    np.testing.assert_allclose(x @ x.T, np.mean(cosines, axis=0), atol=1e-5)
    assigned = clustering.assignments["train"]
    row = assigned.items.index("red things/plain.jpg")
    found = similar(run_dir, "red things/plain.jpg", k=4)
    assert [n.row for n in found.neighbors] == [r for r in np.argsort(-(x @ x[row]), kind="stable") if r != row][:4]
    # a new image: extracted by each backbone TURTLE read, then placed and assigned in its spaces
    copy = tmp_path / "copy of plain.jpg"
    shutil.copyfile(root / "red things" / "plain.jpg", copy)
    new = similar(run_dir, copy, k=3)
    assert new.row is None and new.cluster == assigned.cluster[row]
    assert new.neighbors[0].row == row and new.neighbors[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [n.row for n in new.neighbors[1:]] == [n.row for n in found.neighbors[:2]]
    # the report's map reads the same space
    assert embed_map(clustering, "train", tmp_path / "map").space.startswith("8-dimensional")
