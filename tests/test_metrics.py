"""nolabel.metrics against scikit-learn (the reference), exact rational arithmetic (for the expected
mutual information) and brute force (for the mappings), plus hand-checked protocol cases."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as skm
from sklearn.metrics.cluster import _expected_mutual_info_fast

from nolabel import metrics as M
from nolabel.errors import NolabelError

AVERAGES = ("arithmetic", "geometric", "min", "max")
TOL = 1e-9


def assert_matches_sklearn(pred, labels) -> None:
    """Every metric scikit-learn defines equals ours to TOL (sklearn takes labels_true first)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    c = M.contingency(labels, pred)
    assert c.mutual_info() == pytest.approx(skm.mutual_info_score(labels, pred), abs=TOL)
    assert c.ari() == pytest.approx(skm.adjusted_rand_score(labels, pred), abs=TOL)
    one_side_singletons = (c.n_clusters == c.n) != (c.n_classes == c.n)
    for average in AVERAGES:
        expected_nmi = skm.normalized_mutual_info_score(labels, pred, average_method=average)
        assert c.nmi(average) == pytest.approx(expected_nmi, abs=TOL), average
        if average == "min" and one_side_singletons and c.n_clusters > 1 and c.n_classes > 1:
            # 0/0: MI = EMI = min entropy exactly; sklearn returns rounding noise here.
            assert c.ami(average) == 0.0
            continue
        expected_ami = skm.adjusted_mutual_info_score(labels, pred, average_method=average)
        assert c.ami(average) == pytest.approx(expected_ami, abs=TOL), average


def noisy_clusters(rng, n, n_clusters, n_classes, keep):
    """Labels, and clusters that follow a class→cluster map for a fraction `keep` of samples."""
    labels = rng.integers(0, n_classes, n)
    home = rng.integers(0, n_clusters, n_classes)
    pred = np.where(rng.random(n) < keep, home[labels], rng.integers(0, n_clusters, n))
    return pred, labels


# --- agreement with scikit-learn ------------------------------------------------------------------


def test_random_and_structured_labelings_match_sklearn():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(1, 400))
        n_clusters, n_classes = int(rng.integers(1, 40)), int(rng.integers(1, 25))
        pred, labels = noisy_clusters(rng, n, n_clusters, n_classes, keep=rng.random())
        if case % 3 == 0:  # arbitrary ids: negative, sparse, huge
            pred = pred * 7919 - 1000
            labels = labels.astype(np.int64) * 10**12 + 3
        assert_matches_sklearn(pred, labels)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 6), st.integers(-2, 4)), min_size=1, max_size=60))
def test_small_labelings_match_sklearn(pairs):
    pred, labels = zip(*pairs)
    assert_matches_sklearn(pred, labels)


@pytest.mark.parametrize(
    "pred, labels",
    [
        pytest.param([4] * 10, [1] * 10, id="one-cluster-one-class"),
        pytest.param([0] * 10, list(range(10)), id="one-cluster-singleton-classes"),
        pytest.param(list(range(10)), [2] * 10, id="singleton-clusters-one-class"),
        pytest.param(list(range(12)), [0, 1, 2] * 4, id="singleton-clusters"),
        pytest.param(list(range(12)), list(range(12))[::-1], id="singletons-both"),
        pytest.param([0] * 5 + [1] * 5, [3] * 10, id="one-class"),
        pytest.param([0], [0], id="single-sample"),
        pytest.param([0, 1], [0, 0], id="two-samples"),
        pytest.param([5, 5, -9, -9, 1000, 1000], [2, 2, 0, 0, 1, 1], id="relabelled-perfect"),
        pytest.param([0, 0, 1, 1], [0, 1, 0, 1], id="anti-correlated"),
        pytest.param(np.arange(600) % 300, np.arange(600) % 3, id="K-much-larger-than-C"),
        pytest.param(np.arange(600) % 3, np.arange(600) % 300, id="C-much-larger-than-K"),
    ],
)
def test_edge_cases_match_sklearn(pred, labels):
    assert_matches_sklearn(pred, labels)


@pytest.mark.parametrize(
    "n, n_clusters, n_classes",
    [(20_000, 300, 40), (200_000, 2, 2), (100_000, 3, 5), (3_000, 1_000, 10)],
)
def test_larger_labelings_match_sklearn(n, n_clusters, n_classes):
    rng = np.random.default_rng(n + n_clusters)
    assert_matches_sklearn(*noisy_clusters(rng, n, n_clusters, n_classes, keep=0.5))


def test_degenerate_conventions_are_sklearns():
    # both one group: a perfect match; exactly one of them one group: nothing shared
    assert M.nmi([0, 0, 0], [1, 1, 1]) == M.ami([0, 0, 0], [1, 1, 1]) == 1.0
    assert M.nmi([0, 0, 0], [1, 2, 3]) == M.ami([0, 0, 0], [1, 2, 3]) == 0.0
    assert M.ari([0, 0, 0], [1, 1, 1]) == 1.0
    assert M.mutual_info([0, 0, 0], [1, 1, 1]) == 0.0


# --- expected mutual information ------------------------------------------------------------------


def exact_emi(a: list[int], b: list[int]) -> float:
    """EMI with exact rational hypergeometric probabilities, each term rounded once, summed exactly."""
    n = sum(a)
    terms = []
    for ai, bj in itertools.product(a, b):
        total = math.comb(n, bj)
        for k in range(max(1, ai + bj - n), min(ai, bj) + 1):
            p = Fraction(math.comb(ai, k) * math.comb(n - ai, bj - k), total)
            terms.append(float(p) * (k / n) * math.log(n * k / (ai * bj)))
    return math.fsum(terms)


@pytest.mark.parametrize(
    "a, b",
    [
        ([1500, 1500], [1000, 1200, 800]),  # mean a*b/N in the hundreds: long walks both ways
        ([1, 1, 1, 1, 1], [2, 3]),  # one labeling all singletons
        ([40, 3, 3, 1, 90, 7, 7], [50, 50, 1, 50]),  # mixed sizes, repeated marginals
        ([2, 2], [1, 3]),  # tiny N: the support bounds, not the tolerance, end every walk
    ],
)
def test_expected_mutual_info_equals_exact_sum(a, b):
    counts = _counts_with_marginals(a, b)
    expected = exact_emi(a, b)
    assert M.expected_mutual_info(counts) == pytest.approx(expected, rel=1e-11, abs=1e-15)
    n = sum(a)
    sklearn_value = _expected_mutual_info_fast.expected_mutual_information(counts, n)
    assert M.expected_mutual_info(counts) == pytest.approx(sklearn_value, rel=1e-9, abs=1e-15)


def test_expected_mutual_info_matches_sklearn_on_random_marginals():
    rng = np.random.default_rng(1)
    for _ in range(60):
        n = int(rng.integers(2, 3000))
        pred, labels = noisy_clusters(rng, n, int(rng.integers(1, 60)), int(rng.integers(1, 30)), 0.3)
        counts = M.contingency(labels, pred).counts
        expected = _expected_mutual_info_fast.expected_mutual_information(counts, n)
        assert M.expected_mutual_info(counts) == pytest.approx(expected, rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("a, b", [(1300, 1300), (5000, 1100)])
def test_expected_terms_are_exact_at_imagenet_scale(a, b):
    """At N = 1,281,167 each (a, b) term is exact to ~1e-14 relative, where scikit-learn's
    exp(gammaln) differences lose ~1e-9: the AMI differences seen in benchmarks/metrics.py are
    scikit-learn's rounding, not ours."""
    n = 1_281_167
    total = math.comb(n, b)
    terms = []
    for k in range(1, min(a, b) + 1):
        p = float(Fraction(math.comb(a, k) * math.comb(n - a, b - k), total))
        if p == 0.0 and k > a * b / n:  # the rest of the upper tail underflows too
            break
        terms.append(p * (k / n) * math.log(n * k / (a * b)))
    expected = math.fsum(terms)
    got = M._expected_pair_terms(np.array([a]), np.array([b]), n)[0]
    assert got == pytest.approx(expected, rel=1e-13)


def _counts_with_marginals(a: list[int], b: list[int]) -> np.ndarray:
    """Any non-negative integer matrix with row sums a and column sums b (north-west corner rule)."""
    counts = np.zeros((len(a), len(b)), dtype=np.int64)
    rows, cols = list(a), list(b)
    i = j = 0
    while i < len(rows) and j < len(cols):
        take = min(rows[i], cols[j])
        counts[i, j] += take
        rows[i] -= take
        cols[j] -= take
        i += rows[i] == 0
        j += cols[j] == 0
    assert (counts.sum(axis=1) == a).all() and (counts.sum(axis=0) == b).all()
    return counts


# --- contingency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, offset", [(1, 0), (3, -50), (10**15, 7)])  # dense and np.unique paths
def test_contingency_matches_sklearn_with_caller_ids(scale, offset):
    rng = np.random.default_rng(2)
    pred, labels = noisy_clusters(rng, 5_000, 37, 11, keep=0.6)
    pred = pred * scale + offset
    c = M.contingency(labels, pred)
    np.testing.assert_array_equal(c.clusters, np.unique(pred))
    np.testing.assert_array_equal(c.classes, np.unique(labels))
    np.testing.assert_array_equal(c.counts, skm.cluster.contingency_matrix(pred, labels))
    assert c.counts.dtype == np.int64
    assert (c.n, c.n_clusters, c.n_classes) == (5_000, c.clusters.size, c.classes.size)


def test_contingency_drops_absent_ids():
    c = M.contingency([0, 5, 5, 5], [9, 9, 2, -4])
    np.testing.assert_array_equal(c.clusters, [-4, 2, 9])
    np.testing.assert_array_equal(c.classes, [0, 5])
    np.testing.assert_array_equal(c.counts, [[0, 1], [0, 1], [1, 1]])


# --- mappings and accuracy ------------------------------------------------------------------------


def labelled(counts, cluster_ids=None, class_ids=None):
    """(pred, labels) whose contingency is `counts` (rows: clusters, columns: classes)."""
    counts = np.asarray(counts)
    cluster_ids = np.arange(counts.shape[0]) if cluster_ids is None else np.asarray(cluster_ids)
    class_ids = np.arange(counts.shape[1]) if class_ids is None else np.asarray(class_ids)
    rows, cols = np.nonzero(counts)
    reps = counts[rows, cols]
    return np.repeat(cluster_ids[rows], reps), np.repeat(class_ids[cols], reps)


def test_hungarian_is_one_to_one_and_majority_is_many_to_one():
    pred, labels = labelled([[5, 0], [4, 3]])
    assert M.accuracy(labels, pred, "hungarian") == 8 / 12  # 0→0, 1→1
    assert M.accuracy(labels, pred, "majority") == 9 / 12  # both → class 0
    assert M.purity(labels, pred) == 9 / 12


def test_overclustering_unmatched_clusters_take_their_majority_class():
    pred, labels = labelled([[5, 0], [0, 4], [3, 1]], cluster_ids=[10, 20, 30], class_ids=[7, 8])
    mapping = M.map_clusters(M.contingency(labels, pred), "hungarian")
    assert mapping.as_dict() == {10: 7, 20: 8, 30: 7}
    assert M.accuracy(labels, pred, "hungarian") == 12 / 13


def test_hungarian_accuracy_is_a_maximum_matching_plus_majority_for_the_rest():
    """Brute force over every one-to-one matching of min(K, C) pairs: the mapping's hits must be
    an optimal matching's weight plus, when K > C, the unmatched clusters' majority counts."""
    rng = np.random.default_rng(3)
    for _ in range(60):
        n_clusters, n_classes = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        counts = rng.integers(0, 6, (n_clusters, n_classes))  # small counts: many ties
        counts[:, 0] += 1  # no empty cluster
        if n_clusters <= n_classes:
            matchings = [
                (range(n_clusters), cols)
                for cols in itertools.permutations(range(n_classes), n_clusters)
            ]
        else:
            matchings = [
                (rows, range(n_classes))
                for rows in itertools.permutations(range(n_clusters), n_classes)
            ]
        weights = [counts[list(rows), list(cols)].sum() for rows, cols in matchings]
        best = max(weights)
        allowed = {
            best + sum(counts[i].max() for i in range(n_clusters) if i not in rows)
            for (rows, _), weight in zip(matchings, weights)
            if weight == best
        }
        assigned = M.assign_classes(counts, "hungarian")
        assert counts[np.arange(n_clusters), assigned].sum() in allowed
        if n_clusters <= n_classes:
            assert len(set(assigned)) == n_clusters  # one-to-one
        else:
            assert set(assigned) == set(range(n_classes))  # every class taken
        pred, labels = labelled(counts)
        hits = counts[np.arange(n_clusters), assigned].sum()
        assert M.accuracy(labels, pred, "hungarian") == hits / counts.sum()


def test_mapping_fitted_on_train_is_applied_to_val():
    # train: cluster 10 is class 1, cluster 20 is class 2, cluster 30 is class 1 (majority)
    fit_pred, fit_labels = labelled([[8, 1, 0], [0, 0, 6], [0, 4, 2]], [10, 20, 30], [1, 2, 3])
    fit = (fit_labels, fit_pred)
    mapping = M.contingency(fit_labels, fit_pred).mapping("hungarian")
    assert mapping.as_dict() == {10: 1, 20: 3, 30: 2}
    # val: cluster 40 never appears in train → its samples count wrong; class 3 absent in val
    val_pred = np.array([10, 10, 10, 20, 30, 30, 40, 40])
    val_labels = np.array([1, 1, 2, 2, 2, 1, 1, 2])
    assert M.accuracy(val_labels, val_pred, "hungarian", fit=fit) == 3 / 8  # 10→1 twice, 30→2 once
    majority = M.contingency(fit_labels, fit_pred).mapping("majority").as_dict()
    assert majority == {10: 1, 20: 3, 30: 2}
    # fitted on val itself instead (SCAN's protocol), 40 gets a class and everything changes
    assert M.accuracy(val_labels, val_pred, "hungarian") == 5 / 8


def reference_accuracy(labels_true, labels_pred, fit=None, method="hungarian") -> float:
    """ACC computed independently of nolabel, from scikit-learn's contingency_matrix(labels_true,
    labels_pred) (rows: classes, columns: clusters): hungarian matches clusters one-to-one to
    classes and sends unmatched clusters to their majority class, majority sends every cluster to
    its majority class; fitted on fit=(labels_true, labels_pred) when given."""
    fit_true, fit_pred = (labels_true, labels_pred) if fit is None else fit
    fit_true, fit_pred = np.asarray(fit_true), np.asarray(fit_pred)
    counts = skm.cluster.contingency_matrix(fit_true, fit_pred)  # (C, K)
    classes, clusters = np.unique(fit_true), np.unique(fit_pred)
    assigned = counts.argmax(axis=0)  # majority class of each cluster
    if method == "hungarian":
        rows, cols = linear_sum_assignment(counts, maximize=True)
        assigned[cols] = rows
    mapping = dict(zip(clusters.tolist(), classes[assigned].tolist()))
    hits = [mapping.get(p) == t for t, p in zip(np.asarray(labels_true).tolist(),
                                                np.asarray(labels_pred).tolist())]
    return sum(hits) / len(hits)


def test_accuracy_takes_sklearn_argument_order_with_more_clusters_than_classes():
    """ACC and purity are not symmetric when K > C: (labels_true, labels_pred), scikit-learn's
    order, must give the accuracy of the 3 clusters against the 2 classes, not the reverse."""
    labels_true = [0, 0, 0, 1, 1, 1]
    labels_pred = [0, 0, 1, 1, 2, 2]  # clusters 0 → 0 and 2 → 1 matched; 1 (a tie) takes class 0
    assert reference_accuracy(labels_true, labels_pred) == 5 / 6
    assert reference_accuracy(labels_pred, labels_true) == 4 / 6  # the swapped call's number
    assert M.accuracy(labels_true, labels_pred) == pytest.approx(0.833, abs=1e-3)
    assert M.accuracy(labels_true, labels_pred) == 5 / 6
    assert M.accuracy(labels_pred=labels_pred, labels_true=labels_true) == 5 / 6
    assert M.accuracy(labels_true, labels_pred, "majority") == 5 / 6
    assert M.purity(labels_true, labels_pred) == 5 / 6
    result = M.evaluate(labels_true, labels_pred)
    assert (result["acc"], result["purity"], result["n_clusters"], result["n_classes"]) == (5 / 6, 5 / 6, 3, 2)
    assert M.evaluate(labels_true, labels_pred, fit=(labels_true, labels_pred)) == {**result, "fit_on": "train"}
    assert M.top_k_accuracy(labels_true, np.eye(3)[labels_pred], k=1) == 5 / 6
    c = M.contingency(labels_true, labels_pred)
    np.testing.assert_array_equal(c.counts, skm.cluster.contingency_matrix(labels_true, labels_pred).T)
    assert c.ari() == pytest.approx(skm.adjusted_rand_score(labels_true, labels_pred), abs=TOL)

    rng = np.random.default_rng(7)
    for n_clusters, n_classes in [(15, 10), (40, 6), (7, 3)]:
        pred, labels = noisy_clusters(rng, 3_000, n_clusters, n_classes, keep=0.6)
        train_pred, train_labels = noisy_clusters(rng, 3_000, n_clusters, n_classes, keep=0.6)
        for method in ("hungarian", "majority"):
            assert M.accuracy(labels, pred, method) == pytest.approx(
                reference_accuracy(labels, pred, method=method), abs=TOL
            )
            fit = (train_labels, train_pred)
            assert M.accuracy(labels, pred, method, fit=fit) == pytest.approx(
                reference_accuracy(labels, pred, fit=fit, method=method), abs=TOL
            )
        assert M.accuracy(labels, pred) != M.accuracy(pred, labels)  # the order matters here


def test_unseen_clusters_count_wrong():
    fit = ([0, 0, 1, 1], [0, 0, 1, 1])
    assert M.accuracy([0, 1, 0, 1], [0, 1, 2, 3], fit=fit) == 0.5
    assert M.accuracy([0, 1], [2, 3], fit=fit, method="majority") == 0.0


def test_mapping_lookup_flags_unseen_clusters():
    mapping = M.ClusterMapping(clusters=np.array([2, 5]), classes=np.array([7, 9]), method="majority")
    classes, seen = mapping.lookup(np.array([[5, 3], [2, 99]]))
    np.testing.assert_array_equal(seen, [[True, False], [True, False]])
    np.testing.assert_array_equal(classes[seen], [9, 7])


# --- top-k ----------------------------------------------------------------------------------------


def test_top_k_accuracy_by_hand():
    # 3 clusters; argmax predictions [0, 0, 1, 2] with labels [5, 6, 6, 7] map 0→5, 1→6, 2→7
    scores = np.array([[0.9, 0.07, 0.03], [0.6, 0.4, 0.0], [0.1, 0.8, 0.15], [0.5, 0.0, 0.6]])
    labels = np.array([5, 6, 6, 7])
    assert M.top_k_accuracy(labels, scores, k=1) == 3 / 4
    assert M.top_k_accuracy(labels, scores, k=2) == 1.0
    # fitted elsewhere: 0→6, 1→5, cluster 2 unseen (never matches)
    fit = ([6, 5], [0, 1])
    assert M.top_k_accuracy(labels, scores, k=1, fit=fit) == 1 / 4  # sample 1 only
    assert M.top_k_accuracy(labels, scores, k=2, fit=fit) == 2 / 4  # samples 0 and 1
    assert M.top_k_accuracy(labels, scores, k=3, fit=fit) == 3 / 4  # class 7 is never mapped


def test_top_1_equals_hungarian_accuracy_of_argmax():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, 2_000)
    scores = rng.random((2_000, 9)) + 2.0 * (np.arange(9) == (labels[:, None] % 9))
    pred = scores.argmax(axis=1)
    assert M.top_k_accuracy(labels, scores, k=1) == M.accuracy(labels, pred)
    assert M.top_k_accuracy(labels, scores, k=9) == 1.0  # every class has a matched cluster


# --- evaluate -------------------------------------------------------------------------------------


def test_evaluate_reports_every_metric_and_the_protocol():
    rng = np.random.default_rng(5)
    pred, labels = noisy_clusters(rng, 3_000, 15, 10, keep=0.7)
    scores = rng.random((3_000, 15)) + 3.0 * (np.arange(15) == pred[:, None])
    result = M.evaluate(labels, pred, scores=scores, average_method="geometric")
    assert result["acc"] == result["acc_hungarian"] == M.accuracy(labels, pred)
    assert result["acc_majority"] == result["purity"] == M.purity(labels, pred)
    assert result["nmi"] == pytest.approx(
        skm.normalized_mutual_info_score(labels, pred, average_method="geometric"), abs=TOL
    )
    assert result["ami"] == pytest.approx(
        skm.adjusted_mutual_info_score(labels, pred, average_method="geometric"), abs=TOL
    )
    assert result["ari"] == pytest.approx(skm.adjusted_rand_score(labels, pred), abs=TOL)
    assert result["mi"] == pytest.approx(skm.mutual_info_score(labels, pred), abs=TOL)
    assert result["top5_acc"] == M.top_k_accuracy(labels, scores, k=5)
    assert (result["n"], result["n_clusters"], result["n_classes"]) == (3_000, 15, 10)
    assert (result["mapping"], result["fit_on"], result["average_method"]) == (
        "hungarian", "eval", "geometric",
    )


def test_evaluate_with_a_train_fit():
    rng = np.random.default_rng(6)
    train_pred, train_labels = noisy_clusters(rng, 4_000, 12, 10, keep=0.8)
    train = (train_labels, train_pred)
    val_pred, val_labels = noisy_clusters(rng, 1_000, 12, 10, keep=0.8)
    result = M.evaluate(val_labels, val_pred, method="majority", fit=train)
    assert result["acc"] == result["acc_majority"] == M.accuracy(val_labels, val_pred, "majority", train)
    assert result["acc_hungarian"] == M.accuracy(val_labels, val_pred, "hungarian", train)
    assert (result["fit_on"], result["n_fit"], result["n"]) == ("train", 4_000, 1_000)
    assert result["purity"] == M.purity(val_labels, val_pred)  # always on the evaluated split


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pred, labels, message",
    [
        ([0, 1, 2], [0, 1], "pred has 3 samples but labels has 2"),
        ([], [], "pred: is empty"),
        ([0.0, 1.5], [0, 1], "1.5 at index 1 is not an integer"),
        ([0.0, np.nan], [0, 1], "nan at index 1 is not a finite integer"),
        ([[0, 1]], [0], "expected a 1-D array"),
        (["a", "b"], [0, 1], "expected integer ids"),
    ],
)
def test_bad_input_raises_nolabel_error(pred, labels, message):
    with pytest.raises(NolabelError, match=message):
        M.evaluate(labels, pred)


def test_integral_floats_and_bools_are_ids():
    assert M.ari(np.array([True, True, False]), np.array([0.0, 0.0, 2.0])) == 1.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: M.accuracy([0], [0], method="greedy"), "method must be one of hungarian, majority"),
        (lambda: M.nmi([0], [0], average_method="mean"), "average_method must be one of"),
        (lambda: M.accuracy([0], [0], fit=[0, 0, 1]), "fit must be a pair"),
        (lambda: M.top_k_accuracy([0, 1], np.ones((2, 3)), k=4), "1 <= k <= number of clusters"),
        (lambda: M.top_k_accuracy([0, 1], np.full((2, 3), np.nan)), "NaN"),
        (lambda: M.top_k_accuracy([0, 1, 2], np.ones(3)), "expected shape"),
    ],
)
def test_bad_options_raise_nolabel_error(call, message):
    with pytest.raises(NolabelError, match=message):
        call()


# --- id files -------------------------------------------------------------------------------------


def test_load_ids_reads_npy_and_text(tmp_path):
    np.save(tmp_path / "ids.npy", np.array([3, -1, 3], dtype=np.int32))
    (tmp_path / "with_header.csv").write_text("cluster\n3\n-1\n 3 \n\n")
    (tmp_path / "plain.txt").write_text("3\n-1\n3")
    for name in ("ids.npy", "with_header.csv", "plain.txt"):
        np.testing.assert_array_equal(M.load_ids(tmp_path / name), [3, -1, 3])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.csv", "cluster\n1\n\n2\n", "line 3 .* is not an integer id"),
        ("a.csv", "1\n2,3\n", r"line 2 \('2,3'\) has more than one column"),
        ("a.txt", "1\n2.5\n", "line 2 .* is not an integer id"),
        ("a.txt", "nan\n1\n", "line 1 .* is not an integer id"),
        ("a.csv", "cluster\n", "is empty"),
        ("a.txt", "99999999999999999999\n", "does not fit in 64 bits"),
        ("a.json", "[1, 2]", "unsupported type '.json'"),
    ],
)
def test_load_ids_refuses_bad_text(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(NolabelError, match=message):
        M.load_ids(tmp_path / name)


def test_load_ids_refuses_bad_npy_and_missing_files(tmp_path):
    with pytest.raises(NolabelError, match="not found"):
        M.load_ids(tmp_path / "missing.npy")
    np.save(tmp_path / "objects.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(NolabelError, match="not a readable .npy array"):
        M.load_ids(tmp_path / "objects.npy")
    np.save(tmp_path / "matrix.npy", np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(NolabelError, match="expected a 1-D array"):
        M.load_ids(tmp_path / "matrix.npy")
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    with pytest.raises(NolabelError, match="not a readable .npy array"):
        M.load_ids(tmp_path / "garbage.npy")
