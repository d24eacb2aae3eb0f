"""DeepCluster v1 and v2 on tiny real data (scikit-learn's 8x8 digits, upsampled by the network input)."""
import textwrap

import numpy as np
import pytest
import torch
from distributed_helpers import run_torchrun
from sklearn.datasets import load_digits

from nolabel.cli import main as cli_main
from nolabel.pretrain.deepcluster import (DeepClusterConfig, cluster_features, cluster_memory_bank, pca_dimensions,
                                         train_deepcluster, uniform_cluster_sample)
from nolabel.cluster.kmeans import CHUNK_SIZE
from nolabel.errors import NolabelError
from nolabel.models import create
from nolabel.pretrain.simclr import ProjectionHead, extract_features
from nolabel.training import encode, network_input



@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    images = (d.images * (255 / 16)).round().astype(np.uint8)[:256]
    return images, d.target[:256].astype(np.int64)


def tiny(version, **overrides):
    base = dict(version=version, n_clusters=8, epochs=1, batch_size=64, lr=0.05, random_state=3)
    return DeepClusterConfig(**{**base, **overrides})


# --------------------------------------------------------------------------- sampling and clustering

def test_uniform_sampler_draws_equally_from_non_empty_clusters():
    rng = np.random.default_rng(0)
    # Clusters 0, 3 and 7 (1, 2, 4, 5, 6 empty) of very different sizes: 500, 3 and 40 images.
    assignments = np.concatenate([np.zeros(500), np.full(3, 3), np.full(40, 7)]).astype(np.int64)
    rng.shuffle(assignments)
    sample = uniform_cluster_sample(assignments, 1000, torch.Generator().manual_seed(0))
    assert len(sample) == 1000
    counts = np.bincount(assignments[sample], minlength=8)
    assert set(np.flatnonzero(counts)) == {0, 3, 7}
    assert counts[[0, 3, 7]].max() - counts[[0, 3, 7]].min() <= 1
    # The 3-image cluster is drawn ~333 times: every member, each about equally often.
    small = np.bincount(sample[assignments[sample] == 3], minlength=len(assignments))[assignments == 3]
    assert small.min() >= 111 and small.max() <= 112
    # The 500-image cluster is drawn ~333 times without replacement.
    large = sample[assignments[sample] == 0]
    assert len(np.unique(large)) == len(large)
    # Shuffled, not grouped by cluster.
    assert (np.diff(assignments[sample]) != 0).sum() > 300


def test_uniform_sampler_with_fewer_draws_than_clusters_covers_distinct_clusters():
    assignments = np.repeat(np.arange(10), 5)
    sample = uniform_cluster_sample(assignments, 4, torch.Generator().manual_seed(1))
    assert len(np.unique(assignments[sample])) == 4


def test_pca_dimensions_are_clamped_to_the_feature_dimension():
    assert pca_dimensions(256, 70000, 128) == 128  # cnn28: PCA only whitens
    assert pca_dimensions(256, 70000, 4096) == 256  # AlexNet/VGG: the paper's 256
    assert pca_dimensions(256, 100, 4096) == 100


def test_cluster_features_separates_well_separated_groups():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 32)) * 10
    truth = rng.integers(0, 4, 400)
    features = (centers[truth] + rng.standard_normal((400, 32))).astype(np.float32)
    labels = cluster_features(features, 4, pca_dim=3, max_iter=20, n_init=3)  # the 3-d signal subspace
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)


# --------------------------------------------------------------------------- training

def test_v1_one_epoch_end_to_end_and_the_backbone_loads_by_name(digits, tmp_path):
    images, labels = digits
    result = train_deepcluster(images, tmp_path, tiny("v1"), labels=labels, show_progress=False)
    (record,) = result.history
    assert record["pca_dim"] == 128
    assert record["nmi_vs_previous_epoch"] is None
    assert set(record["vs_labels"]) == {"acc", "acc_majority", "nmi", "ami", "ari"}
    assert 0 <= record["vs_labels"]["nmi"] <= 1 and np.isfinite(record["loss"])
    assert result.assignments.shape == (256,) and result.assignments.max() < 8
    np.testing.assert_array_equal(np.load(tmp_path / "assignments.npy"), result.assignments)
    assert (tmp_path / "history.json").exists()
    # `nolabel extract --model cnn28 --weights DIR/backbone.pt` builds it this way.
    loaded = create("cnn28", weights=tmp_path / "backbone.pt")
    assert loaded.load_report.wrapper == "nolabel"
    np.testing.assert_allclose(extract_features(loaded, images[:32]), extract_features(result.backbone, images[:32]),
                               rtol=0, atol=1e-6)
    heads = torch.load(tmp_path / "backbone.pt", weights_only=True)["heads"]
    assert heads["top_layer"]["weight"].shape == (8, 128)


def test_v1_resume_continues_exactly_where_it_stopped(digits, tmp_path):
    images, labels = digits
    config = tiny("v1", epochs=2)
    straight = train_deepcluster(images, tmp_path / "straight", config, labels=labels, show_progress=False)

    # No time left after the first epoch: the run stops there, as a killed run would.
    first = train_deepcluster(images, tmp_path / "resumed", config, labels=labels, show_progress=False,
                              max_seconds=0)
    assert len(first.history) == 1
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["epoch"] == 1
    # another configuration never resumes this state: it is refused, naming what changed
    with pytest.raises(NolabelError, match=r"config\.lr differ.*--force"):
        train_deepcluster(images, tmp_path / "resumed", tiny("v1", epochs=2, lr=0.01), labels=labels,
                          show_progress=False)
    resumed = train_deepcluster(images, tmp_path / "resumed", config, labels=labels, show_progress=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]
    # Epoch 2 clusters the resumed network's features and compares with the restored assignments.
    for key in ("nmi_vs_previous_epoch", "vs_labels", "loss", "empty_clusters"):
        assert resumed.history[1][key] == straight.history[1][key]
    np.testing.assert_array_equal(resumed.assignments, straight.assignments)
    for name, value in straight.backbone.state_dict().items():
        torch.testing.assert_close(resumed.backbone.state_dict()[name], value, rtol=0, atol=0)
    # A finished run returns at once with the same history.
    again = train_deepcluster(images, tmp_path / "resumed", config, show_progress=False)
    assert again.history == resumed.history


def test_resume_refuses_another_version(digits, tmp_path):
    images, _ = digits
    train_deepcluster(images, tmp_path, tiny("v1"), show_progress=False)
    with pytest.raises(NolabelError, match=r"config\.version differ.*--force"):
        train_deepcluster(images, tmp_path, tiny("v2"), show_progress=False)


def test_v2_two_epochs_end_to_end_with_unit_embeddings_and_prototypes(digits, tmp_path):
    images, labels = digits
    config = tiny("v2", epochs=2, heads=2)
    result = train_deepcluster(images, tmp_path, config, labels=labels, show_progress=False)
    assert result.assignments.shape == (2, 256)
    assert 0 <= result.history[1]["nmi_vs_previous_epoch"] <= 1
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    bank = state["bank"]
    assert bank.shape == (256, 128)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(256))
    prototypes = torch.load(tmp_path / "backbone.pt", weights_only=True)["heads"]["prototypes"]["prototypes"]
    assert prototypes.shape == (2, 8, 128)
    torch.testing.assert_close(prototypes.norm(dim=2), torch.ones(2, 8))


def test_v2_prototypes_are_the_banks_centroids_and_the_bank_is_refreshed(digits, tmp_path):
    images, _ = digits
    config = tiny("v2", heads=2, kmeans_iter=5).resolved()
    train_deepcluster(images, tmp_path, config, show_progress=False)
    prototypes = torch.load(tmp_path / "backbone.pt", weights_only=True)["heads"]["prototypes"]["prototypes"]
    # The initial bank: one pass of the untrained network (BatchNorm on batch statistics), rebuilt
    # here from the same seed.
    torch.manual_seed(config.random_state)  # train_deepcluster's seed for its initialisation
    fresh = create(config.model, pretrained=False).to(memory_format=torch.channels_last)
    head = ProjectionHead(fresh.feature_dim, fresh.feature_dim, config.projection_dim)
    network = torch.nn.Sequential(fresh, head).train()
    embeddings = encode(lambda x: network(x), images, network_input(fresh))
    initial_bank = torch.nn.functional.normalize(torch.from_numpy(embeddings), dim=1).numpy()
    # The epoch trained against frozen prototypes: exactly the k-means centroids of that bank.
    expected, _ = cluster_memory_bank(initial_bank, config.n_clusters, config.heads, config.kmeans_iter, seed=config.random_state * 1000)
    np.testing.assert_allclose(prototypes.numpy(), expected, rtol=0, atol=1e-6)
    # Training wrote every visited image's new embedding into the bank (4 batches of 64 cover all 256).
    bank = torch.load(tmp_path / "state.pt", weights_only=True)["bank"].numpy()
    assert np.abs(bank - initial_bank).max(axis=1).min() > 1e-3


def test_v2_learns_features_that_cluster_better_than_the_untrained_network(tmp_path):
    from nolabel.pretrain.deepcluster import evaluate_backbone

    # 60 digits of each class, 6 epochs of v2 at 16 px.
    d = load_digits()
    keep = np.concatenate([np.flatnonzero(d.target == c)[:60] for c in range(10)])
    images = (d.images[keep] * (255 / 16)).round().astype(np.uint8)
    labels = d.target[keep].astype(np.int64)
    config = DeepClusterConfig(version="v2", n_clusters=30, heads=2, epochs=6, batch_size=32, lr=0.1, schedule="constant",
                               image_size=16, crop_scale=(0.3, 1.0), flip_p=0.0, random_state=0)

    def nmi_of(backbone):  # the library's protocol: eval-mode features, whitened PCA, L2, k-means K=10
        return evaluate_backbone(backbone, images, labels, k=10, n_init=10, image_size=16)[1]["nmi"]

    torch.manual_seed(config.random_state)  # train_deepcluster's seed for its initialisation
    untrained = nmi_of(create(config.model, pretrained=False))
    trained = nmi_of(train_deepcluster(images, tmp_path, config, show_progress=False).backbone)
    # Measured, seeds 0-4 (untrained -> trained): 0.173 -> 0.406, 0.211 -> 0.431, 0.193 -> 0.375,
    # 0.149 -> 0.378, 0.164 -> 0.363; margins 0.18-0.23. With the targets shuffled (nothing to learn
    # from the clustering) or lr ~0 this test fails. v1 at this budget does not beat the untrained
    # network (see BENCHMARKS.md's Fashion-MNIST rows), so only v2's learning is checked here.
    assert trained > untrained + 0.1, (untrained, trained)


def test_cli_trains_and_evaluates(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["deepcluster", "--data", "digits", "--model", "cnn28", "--k", "20", "--epochs", "1",
                     "--batch-size", "128", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "evaluation (k-means K=10" in printed
    import json

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["k"] == 10 and evaluation["n"] == 1797 and 0 < evaluation["nmi"] <= 1


def test_config_errors_are_clear():
    with pytest.raises(NolabelError, match="version"):
        DeepClusterConfig(version="v3").resolved()
    with pytest.raises(NolabelError, match="n_clusters >= 2"):
        DeepClusterConfig(n_clusters=1).resolved()
    assert DeepClusterConfig(version="v2").resolved().kmeans_iter == 10
    assert DeepClusterConfig(version="v1").resolved().jitter_p == 0.0


# --------------------------------------------------------------------------- distributed

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    from nolabel import distributed
    from nolabel.pretrain.deepcluster import cluster_memory_bank, gather_rows

    distributed.init()
    bank = np.load(sys.argv[1])
    # Each process holds only the bank rows it embedded; the clustering step sees them all.
    rows = distributed.shard(len(bank))
    full = gather_rows(torch.from_numpy(bank[rows.start:rows.stop]), rows, len(bank)).numpy()
    prototypes, assignments = cluster_memory_bank(full, 12, heads=2, max_iter=10, seed=5)
    if distributed.is_main():
        np.savez(sys.argv[2], world=distributed.world_size(), prototypes=prototypes, assignments=assignments)
""")


def test_v2_clustering_step_on_two_processes_equals_one(tmp_path):
    rng = np.random.default_rng(0)
    n = 2 * CHUNK_SIZE + 3000  # the second process owns whole chunks, so the sums really are all-reduced
    centers = rng.standard_normal((15, 16))
    bank = centers[rng.integers(0, 15, n)] + 0.3 * rng.standard_normal((n, 16))
    bank = (bank / np.linalg.norm(bank, axis=1, keepdims=True)).astype(np.float32)
    np.save(tmp_path / "bank.npy", bank)
    (tmp_path / "cluster.py").write_text(SCRIPT)
    run = run_torchrun(tmp_path / "cluster.py", tmp_path / "bank.npy", tmp_path / "out.npz", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = np.load(tmp_path / "out.npz")
    assert int(result["world"]) == 2
    prototypes, assignments = cluster_memory_bank(bank, 12, heads=2, max_iter=10, seed=5)
    np.testing.assert_array_equal(result["prototypes"], prototypes)
    np.testing.assert_array_equal(result["assignments"], assignments)
    assert not np.array_equal(assignments[0], assignments[1])  # the heads are different clusterings
