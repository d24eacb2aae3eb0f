"""`nolabel.cluster.SCAN`: a scikit-learn clusterer (conformance checks, pipelines, small data)."""
import dataclasses
import inspect

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from nolabel.cluster import SCAN
from nolabel.cluster.scan import ScanConfig
from nolabel.config import SCAN_FEATURES_LR


# Every check passes: SCAN takes no sample_weight, so the sample-weight checks (which scikit-learn's
# own KMeans fails) do not apply. About 20 s with the default parameters (50 epochs, 10 heads).
@parametrize_with_checks([SCAN()])
def test_scikit_learn_conformance(estimator, check):
    check(estimator)


def test_parameters_are_scan_configs_fields_with_its_defaults_but_the_frozen_features_lr():
    params = inspect.signature(SCAN).parameters
    fields = {f.name: f.default for f in dataclasses.fields(ScanConfig)}
    assert list(params) == list(fields)
    assert {name: p.default for name, p in params.items() if name != "lr"} == \
        {name: value for name, value in fields.items() if name != "lr"}
    assert params["lr"].default == SCAN_FEATURES_LR == 1e-3 and fields["lr"] == 1e-4


def _blobs():
    return make_blobs(n_samples=400, centers=4, n_features=16, cluster_std=1.0, center_box=(-10, 10), random_state=0)


def test_in_a_pipeline_finds_separated_blobs_and_is_reproducible():
    X, y = _blobs()
    pipeline = make_pipeline(PCA(8, random_state=0), SCAN(n_clusters=4, n_heads=3, epochs=30, batch_size=64))
    labels = pipeline.fit_predict(X)
    assert adjusted_rand_score(y, labels) > 0.99
    scan = pipeline[-1]
    assert scan.labels_.shape == (400,) and scan.labels_.dtype == np.int64
    assert scan.n_features_in_ == 8 and 0 <= scan.best_head_ < 3 and len(scan.head_losses_) == 3
    np.testing.assert_array_equal(pipeline.predict(X), labels)  # the kept head, eval mode
    probabilities = pipeline.predict_proba(X)
    assert probabilities.shape == (400, 4)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    # a clone (unfitted, same parameters) and a second fit give the same labels, bit for bit
    clone_labels = clone(pipeline).fit_predict(X)
    np.testing.assert_array_equal(clone_labels, labels)
    before = torch.get_rng_state()
    np.testing.assert_array_equal(pipeline.fit(X)[-1].labels_, labels)
    assert torch.equal(torch.get_rng_state(), before)  # fitting leaves torch's global RNG alone
    other_seed = clone(pipeline).set_params(scan__random_state=1).fit(X)[-1]
    assert not np.array_equal(other_seed.predict_proba(pipeline[0].transform(X)), probabilities)


def test_small_data_clips_the_batch_and_the_neighbours_and_refuses_too_many_clusters():
    X, _ = make_blobs(n_samples=30, centers=3, n_features=4, random_state=0)
    scan = SCAN(n_clusters=3, n_heads=2, epochs=2, batch_size=256, n_neighbors=50).fit(X)  # 30 rows
    assert scan.labels_.shape == (30,)
    assert scan.predict_proba(X[:5]).shape == (5, 3)
    with pytest.raises(ValueError, match="n_clusters=31 must be between 1 and n_samples=30"):
        SCAN(n_clusters=31).fit(X)
    single = SCAN(n_clusters=1).fit(X)
    assert single.heads_ is None and not single.labels_.any() and (single.predict_proba(X) == 1).all()
    with pytest.raises(ValueError, match="n_heads must be an integer"):
        SCAN(n_heads=2.5).fit(X)
    with pytest.raises(ValueError, match="lr > 0"):
        SCAN(lr=0.0).fit(X)


def test_augmented_views_are_passed_through_and_checked():
    X, y = _blobs()
    rng = np.random.default_rng(0)
    views = X[None] + rng.normal(scale=0.5, size=(2, *X.shape))
    kwargs = dict(n_clusters=4, n_heads=2, epochs=30, batch_size=64)
    plain = SCAN(**kwargs).fit(X)
    augmented = SCAN(**kwargs).fit(X, augmented=views)
    assert adjusted_rand_score(y, augmented.labels_) > 0.99
    assert not np.array_equal(plain.predict_proba(X), augmented.predict_proba(X))  # the views were trained on
    np.testing.assert_array_equal(SCAN(**kwargs).fit_predict(X, augmented=views), augmented.labels_)
    with pytest.raises(ValueError, match=r"augmented views must be \(V, N, D\)"):
        SCAN(**kwargs).fit(X, augmented=views[:, :10])
