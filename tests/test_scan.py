import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nolabel.cluster.neighbors import mine_neighbors
from nolabel.cluster.scan import (ClusterHeads, ScanConfig, entropy, load_scan, predict_scan, scan_loss,
                                  scan_loss_of_probabilities, select_head, train_scan_features)
from nolabel.errors import NolabelError
from nolabel.metrics import evaluate


def test_scan_loss_hand_computed():
    # Logits chosen so the softmaxes are exact: log-probabilities.
    pa = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    pn = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    loss = scan_loss(pa.log(), pn.log(), entropy_weight=5.0)
    consistency = -(math.log(0.5) + math.log(0.9 * 0.2 + 0.1 * 0.8)) / 2
    mean = [0.7, 0.3]
    spread = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert loss.consistency.item() == pytest.approx(consistency, rel=1e-6)
    assert loss.entropy.item() == pytest.approx(spread, rel=1e-6)
    assert loss.total.item() == pytest.approx(consistency - 5 * spread, rel=1e-6)
    assert sum(mean) == pytest.approx(1)


def test_entropy_term_gradient_matches_the_analytic_one():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    p = F.softmax(logits, 1)
    h = entropy(p.mean(0))
    h.backward()
    # dH/dpbar_k = -(log pbar_k + 1); dpbar_k/dz_bj = p_bk (delta_kj - p_bj) / B
    pbar = p.detach().mean(0)
    g_pbar = -(pbar.log() + 1)
    pd = p.detach()
    jac = (torch.diag_embed(pd) - pd[:, :, None] * pd[:, None, :]) / len(pd)  # (B, k, j)
    expected = torch.einsum("k,bkj->bj", g_pbar, jac)
    torch.testing.assert_close(logits.grad, expected)
    # Maximising the entropy pushes a collapsed batch apart: gradient descent on -H raises the rare class.
    collapsed = torch.tensor([[3.0, 0.0], [3.0, 0.0]], requires_grad=True)
    (-entropy(F.softmax(collapsed, 1).mean(0))).backward()
    assert (collapsed.grad[:, 1] < 0).all()


def test_whole_dataset_loss_and_head_selection():
    p = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    nb = np.array([[1], [0], [3], [2]])
    perfect = scan_loss_of_probabilities(p, nb, entropy_weight=1.0)
    assert perfect["consistency"] == pytest.approx(0, abs=1e-9)
    assert perfect["entropy"] == pytest.approx(math.log(2))
    uniform = scan_loss_of_probabilities(np.full((4, 2), 0.5), nb, entropy_weight=1.0)
    assert uniform["consistency"] == pytest.approx(math.log(2))
    losses = [uniform, perfect, {"total": perfect["total"] + 1}]
    assert select_head(losses) == 1


def _blobs(n_per=150, k=4, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 4
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    return x, y


def test_heads_on_features_find_separated_clusters_and_keep_lowest_loss_head(tmp_path):
    x, y = _blobs()
    nb = mine_neighbors(x, k=10)
    config = ScanConfig(n_clusters=4, n_heads=3, epochs=15, batch_size=100, lr=1e-2)
    result = train_scan_features(x, nb, config, out_dir=tmp_path, show_progress=False)
    assert evaluate(result.predictions, y)["acc"] > 0.95
    assert result.best_head == int(np.argmin([h["total"] for h in result.head_losses]))
    heads, best, saved = load_scan(tmp_path / "scan.pt")
    assert best == result.best_head
    with torch.no_grad():
        probs = F.softmax(heads.single(best)(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(probs, result.probabilities, atol=1e-5)


def interrupt_after(monkeypatch, epochs):
    """Make TrainingState.save raise KeyboardInterrupt right after saving epoch `epochs`."""
    from nolabel.training import TrainingState

    original = TrainingState.save

    def save(self, epoch, *args, **kwargs):
        original(self, epoch, *args, **kwargs)
        if epoch == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingState, "save", save)


def test_resume_continues_exactly(tmp_path, monkeypatch):
    x, _ = _blobs(60)
    nb = mine_neighbors(x, k=5)
    augmented = np.stack([x + 0.1, x - 0.1]).astype(np.float32)
    config = ScanConfig(n_clusters=4, n_heads=2, epochs=4, batch_size=60, lr=1e-2)
    full = train_scan_features(x, nb, config, augmented=augmented, out_dir=tmp_path / "full", show_progress=False)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            train_scan_features(x, nb, config, augmented=augmented, out_dir=tmp_path / "resumed", show_progress=False)
    assert torch.load(tmp_path / "resumed" / "scan_state.pt", weights_only=True)["epoch"] == 2
    resumed = train_scan_features(x, nb, config, augmented=augmented, out_dir=tmp_path / "resumed",
                                  show_progress=False)
    assert resumed.history == full.history
    np.testing.assert_allclose(resumed.probabilities, full.probabilities, atol=1e-6)


def test_cluster_heads_shapes_and_validation():
    heads = ClusterHeads(5, 3, n_heads=2, hidden_dim=8)
    out = heads(torch.randn(4, 5))
    assert len(out) == 2 and out[0].shape == (4, 3)
    from nolabel.errors import NolabelError
    with pytest.raises(NolabelError):
        ClusterHeads(5, 1)


def test_cli_scan_then_selflabel_on_digits_pixels(tmp_path, capsys):
    from sklearn.datasets import load_digits

    from nolabel.cli import main
    from nolabel.store import write_store

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    items = [f"all/{i}" for i in range(len(x))]
    write_store(tmp_path / "feats", x, digits.target, items, {"model": "pixels"})
    write_store(tmp_path / "aug", x + np.float32(0.05), digits.target, items, {"model": "pixels"})
    # Other images to assign: a noisy copy of the first 500.
    noisy = x[:500] + np.random.default_rng(0).normal(0, 0.05, (500, 64)).astype(np.float32)
    write_store(tmp_path / "heldout", noisy, digits.target[:500], items[:500], {"model": "pixels"})
    train_args = ["scan", "--features", str(tmp_path / "feats"), "--augmented", str(tmp_path / "aug"),
                  "--out", str(tmp_path / "scan"), "--k", "10", "--heads", "3", "--epochs", "30",
                  "--batch-size", "256", "--lr", "1e-2", "--quiet"]
    assert main(train_args + ["--eval-features", str(tmp_path / "missing")]) == 2  # refused before training
    assert not (tmp_path / "scan").exists()
    assert main(train_args + ["--eval-features", str(tmp_path / "heldout")]) == 0
    out = capsys.readouterr().out
    assert "head" in out and "neighbour purity" in out
    held = np.load(tmp_path / "scan" / "predictions_heldout.npy")
    assert "heldout: 500 images assigned; ACC" in out and held.shape == (500,)
    # The noise moves few of them to another cluster than the training assigned.
    assert np.mean(held == np.load(tmp_path / "scan" / "predictions.npy")[:500]) > 0.9
    summary = __import__("json").loads((tmp_path / "scan" / "scan.json").read_text())
    assert summary["metrics"]["acc"] > 0.6  # k-means on these pixels reaches ~0.7-0.8
    assert np.load(tmp_path / "scan" / "predictions.npy").shape == (len(x),)
    # Refuses to overwrite without --force.
    assert main(["scan", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "scan"), "--quiet"]) == 2
    assert main(["selflabel", "--scan", str(tmp_path / "scan"), "--features", str(tmp_path / "feats"),
                 "--augmented", str(tmp_path / "aug"), "--out", str(tmp_path / "sl"), "--epochs", "3",
                 "--threshold", "0.9", "--eval-features", str(tmp_path / "heldout"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "self-labeled: ACC" in out and "heldout: 500 images assigned; ACC" in out
    assert (tmp_path / "sl" / "predictions_heldout.npy").exists()
    assert (tmp_path / "sl" / "selflabel.json").exists()


DDP_SCRIPT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from nolabel import distributed
from nolabel.cluster.neighbors import mine_neighbors
from nolabel.cluster.scan import ScanConfig, train_scan_features
from nolabel.cluster.selflabel import SelfLabelConfig, train_selflabel_features
assert distributed.init() and distributed.world_size() == 2
rng = np.random.default_rng(0)
centers = rng.normal(size=(3, 6)) * 4
x = np.concatenate([c + rng.normal(size=(80, 6)) for c in centers]).astype(np.float32)
nb = mine_neighbors(x, k=8)
r = train_scan_features(x, nb, ScanConfig(n_clusters=3, n_heads=2, epochs=8, batch_size=60, lr=1e-2),
                        out_dir=sys.argv[1], show_progress=False)
weights = torch.cat([p.detach().flatten() for p in r.heads.parameters()])
gathered = [torch.zeros_like(weights) for _ in range(2)]
torch.distributed.all_gather(gathered, weights)
assert torch.equal(gathered[0], gathered[1]), "DDP replicas diverged"
s = train_selflabel_features(x, r.heads.single(r.best_head), r.probabilities,
                             SelfLabelConfig(threshold=0.9, epochs=2, batch_size=60, lr=1e-2), show_progress=False)
if distributed.is_main():
    np.save(sys.argv[1] + "/pred.npy", s.predictions)
# SimCLR under DDP: every process ends with the same backbone.
from sklearn.datasets import load_digits
from nolabel.pretrain import SimCLRConfig, train_simclr
images = (load_digits().images[:256] * (255 / 16)).astype(np.uint8)
res = train_simclr(images, sys.argv[1] + "/simclr", SimCLRConfig(epochs=1, batch_size=64, lr=0.1, image_size=16),
                   show_progress=False)
weights = torch.cat([p.detach().flatten() for p in res.backbone.parameters()])
gathered = [torch.zeros_like(weights) for _ in range(2)]
torch.distributed.all_gather(gathered, weights)
assert torch.equal(gathered[0], gathered[1]), "SimCLR DDP replicas diverged"
torch.distributed.barrier()
torch.distributed.destroy_process_group()
# Skip interpreter teardown: gloo's threads can abort ("terminate called without an active
# exception") while static objects are destroyed, after all the work above has succeeded.
import os
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.slow
def test_simclr_scan_and_selflabel_under_torchrun_with_two_gloo_processes(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_scan.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29533", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pred = np.load(tmp_path / "pred.npy")
    y = np.repeat(np.arange(3), 80)
    assert evaluate(pred, y)["acc"] > 0.95
    assert (tmp_path / "scan.pt").exists()
    assert (tmp_path / "simclr" / "backbone.pt").exists()


def test_whole_network_mode_trains_backbone_and_heads_then_self_labels(tmp_path):
    from nolabel.augment import WeakAugment
    from nolabel.cluster.selflabel import SelfLabelConfig, run_selflabel
    from nolabel.cluster.scan import train_scan_network
    from nolabel.data import load
    from nolabel.models import create

    images = load("digits").images  # the images the file-level stages below load by name
    backbone = create("cnn28", pretrained=False)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    nb = mine_neighbors(images.reshape(len(images), -1).astype(np.float32), k=5)
    result = train_scan_network(images, backbone, nb, ScanConfig(n_clusters=10, n_heads=2, epochs=1, batch_size=256,
                                                                 lr=1e-3),
                                augment=WeakAugment(), image_size=16, out_dir=tmp_path / "scan", show_progress=False)
    assert result.probabilities.shape == (1797, 10)
    assert any(not torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    _, _, saved = load_scan(tmp_path / "scan" / "scan.pt")
    assert saved["meta"] == {"mode": "network", "model": "cnn28"}
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(saved["modules"]["backbone"][k], v)
    # The file-level stage rebuilds cnn28 from scan.pt and self-labels on the digits images.
    np.save(tmp_path / "scan" / "probabilities.npy", result.probabilities)
    summary = run_selflabel(tmp_path / "scan", tmp_path / "sl", data="digits", image_size=16,
                            config=SelfLabelConfig(threshold=float(np.median(result.probabilities.max(1))), epochs=1,
                                                   batch_size=256), show_progress=False)
    assert summary["mode"] == "network" and summary["metrics"]["n"] == 1797 and not summary["skipped"]
    # New images go through the backbone SCAN trained, then the self-labeled one: the training's own
    # predictions on the same images come back.
    np.testing.assert_allclose(predict_scan(tmp_path / "scan", data="digits", image_size=16),
                               result.probabilities, atol=1e-5)
    np.testing.assert_array_equal(
        predict_scan(tmp_path / "scan", data="digits", image_size=16, selflabel_dir=tmp_path / "sl").argmax(1),
        np.load(tmp_path / "sl" / "predictions.npy"))
    with pytest.raises(NolabelError, match="whole network; predict from data"):
        predict_scan(tmp_path / "scan", features=tmp_path)


def test_augmented_view_stores_differ_per_view_are_kept_and_follow_the_weights(tmp_path):
    from nolabel.cluster.scan import write_augmented_views
    from nolabel.io import sha256_file
    from nolabel.models import create
    from nolabel.store import FeatureStore

    paths = write_augmented_views("digits", "cnn28", tmp_path, kind="strong", n_views=2, image_size=16,
                                  show_progress=False)
    a, b = (np.asarray(FeatureStore.open(p).features) for p in paths)
    assert a.shape == b.shape == (1797, 128)
    assert not np.allclose(a, b)
    assert FeatureStore.open(paths[0]).manifest["augmentation"] == "strong"
    stamp = (paths[0] / "features.npy").stat().st_mtime_ns
    write_augmented_views("digits", "cnn28", tmp_path, kind="strong", n_views=2, image_size=16, show_progress=False)
    assert (paths[0] / "features.npy").stat().st_mtime_ns == stamp
    # Other weights under the same path (a retrained backbone): the stale views are recomputed.
    backbone = create("cnn28")
    torch.save({"state_dict": backbone.body.state_dict()}, tmp_path / "backbone.pt")
    write_augmented_views("digits", "cnn28", tmp_path, kind="strong", n_views=1, image_size=16,
                          weights=tmp_path / "backbone.pt", show_progress=False)
    assert (paths[0] / "features.npy").stat().st_mtime_ns != stamp
    assert FeatureStore.open(paths[0]).manifest["weights_sha256"] == sha256_file(tmp_path / "backbone.pt")
    assert not np.allclose(np.asarray(FeatureStore.open(paths[0]).features), a)
    with pytest.raises(Exception, match="kind"):
        write_augmented_views("digits", "cnn28", tmp_path, kind="medium", n_views=1)


def test_scan_stage_pca_feeds_neighbours_heads_and_selflabel(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA as SkPCA

    from nolabel.cluster.scan import run_scan
    from nolabel.cluster.selflabel import SelfLabelConfig, run_selflabel
    from nolabel.errors import NolabelError
    from nolabel.store import write_store

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    items = [f"all/{i}" for i in range(len(x))]
    write_store(tmp_path / "feats", x, digits.target, items, {"model": "pixels"})
    write_store(tmp_path / "aug", x + np.float32(0.05), digits.target, items, {"model": "pixels"})
    config = ScanConfig(n_clusters=10, n_heads=2, epochs=30, batch_size=256, lr=1e-2, hidden_dim=64)
    summary = run_scan(tmp_path / "scan", features=tmp_path / "feats", augmented=[tmp_path / "aug"],
                       num_neighbors=10, pca_components=16, config=config, show_progress=False)
    assert summary["pca_components"] == 16 and summary["metrics"]["acc"] > 0.6
    heads, _, _ = load_scan(tmp_path / "scan" / "scan.pt")
    assert heads.in_dim == 16
    # Neighbours were mined in the PCA space: compare with scikit-learn's PCA (float64).
    reference = mine_neighbors(SkPCA(16).fit_transform(x.astype(np.float64)).astype(np.float32), k=10)
    mined = np.load(tmp_path / "scan" / "neighbors.npy")
    same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mined, reference)])
    assert same > 0.97
    # Self-labeling projects its features with the saved PCA (16-d heads on 64-d features would fail).
    sl = run_selflabel(tmp_path / "scan", tmp_path / "sl", features=tmp_path / "feats",
                       augmented=[tmp_path / "aug"], config=SelfLabelConfig(threshold=0.9, epochs=2, lr=1e-3),
                       show_progress=False)
    assert sl["metrics"]["acc"] > 0.6
    # Assigning images later goes through the same PCA and head (or its self-labeled version).
    np.testing.assert_allclose(predict_scan(tmp_path / "scan", features=tmp_path / "feats"),
                               np.load(tmp_path / "scan" / "probabilities.npy"), atol=1e-6)
    np.testing.assert_allclose(predict_scan(tmp_path / "scan", features=tmp_path / "feats", selflabel_dir=tmp_path / "sl"),
                               np.load(tmp_path / "sl" / "probabilities.npy"), atol=1e-6)
    # Recomputing the folder without PCA removes it, so self-labeling sees the features as they are.
    run_scan(tmp_path / "scan", features=tmp_path / "feats", num_neighbors=10, config=config, force=True,
             show_progress=False)
    assert not (tmp_path / "scan" / "pca.npz").exists()
    assert load_scan(tmp_path / "scan" / "scan.pt")[0].in_dim == 64
    # Bad requests fail before any training, naming the limit.
    with pytest.raises(NolabelError, match="at most 64"):
        run_scan(tmp_path / "bad", features=tmp_path / "feats", pca_components=65, config=config)
    with pytest.raises(NolabelError, match=">= 1"):
        run_scan(tmp_path / "bad", features=tmp_path / "feats", pca_components=0, config=config)
    with pytest.raises(NolabelError, match="frozen"):
        run_scan(tmp_path / "bad", data="digits", model="cnn28", pca_components=8, config=config)
    assert not (tmp_path / "bad" / "scan.pt").exists()


def test_device_names_resolve_or_fail_clearly():
    from nolabel.distributed import resolve_device
    from nolabel.errors import NolabelError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(NolabelError, match="device must be one of auto, cpu, cuda, got 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(NolabelError, match="device must be one of"):
        ScanConfig(device="gpu").validate()
    if not torch.cuda.is_available():
        with pytest.raises(NolabelError, match="no CUDA device is visible"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_cli_scan_on_cuda_without_a_gpu_fails_before_writing(tmp_path, capsys):
    from nolabel.cli import main
    from nolabel.store import write_store

    x, y = _blobs()
    write_store(tmp_path / "feats", x, y, [f"all/{i}" for i in range(len(x))], {"model": "pixels"})
    assert main(["scan", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "scan"), "--device", "cuda",
                 "--quiet"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err
    assert not (tmp_path / "scan").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_scan_and_selflabel_train_on_the_gpu_and_hand_back_cpu_modules(tmp_path):
    from nolabel.cluster.selflabel import SelfLabelConfig, train_selflabel_features

    x, y = _blobs()
    nb = mine_neighbors(x, k=10)
    config = ScanConfig(n_clusters=4, n_heads=2, epochs=20, batch_size=100, lr=1e-2, hidden_dim=32, device="cuda")
    result = train_scan_features(x, nb, config, out_dir=tmp_path / "scan", show_progress=False)
    assert evaluate(result.predictions, y)["acc"] > 0.95
    assert all(p.device.type == "cpu" for p in result.heads.parameters())
    head = result.heads.single(result.best_head)
    sl = train_selflabel_features(x, head, result.probabilities,
                                  SelfLabelConfig(threshold=0.9, epochs=2, lr=1e-3, device="cuda"),
                                  out_dir=tmp_path / "sl", show_progress=False)
    assert evaluate(sl.predictions, y)["acc"] > 0.95
    assert all(p.device.type == "cpu" for p in head.parameters())
