import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nolabel.cluster.neighbors import mine_neighbors
from nolabel.cluster.scan import (ClusterHeads, ScanConfig, entropy, load_scan, predict_scan, scan_loss,
                                  scan_loss_of_probabilities, select_head, train_scan_features)
from nolabel.errors import NolabelError
from nolabel.io import read_json
from nolabel.metrics import evaluate


def test_scan_loss_hand_computed():
    # Logits chosen so the softmaxes are exact: log-probabilities.
    pa = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    pn = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    loss = scan_loss(pa.log(), pn.log(), entropy_weight=5.0)
    # <pa_b, pn_b> = 0.5 and 0.9 * 0.2 + 0.1 * 0.8 = 0.26; consistency is minus their mean log.
    consistency = -(math.log(0.5) + math.log(0.26)) / 2  # 1.02011...
    # Entropy of the ANCHORS' mean prediction (0.7, 0.3), not the neighbours' (0.35, 0.65).
    spread = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))  # 0.61086...
    assert loss.consistency.item() == pytest.approx(1.020110, abs=1e-5)
    assert loss.consistency.item() == pytest.approx(consistency, rel=1e-6)
    assert loss.entropy.item() == pytest.approx(0.610864, abs=1e-5)
    assert loss.entropy.item() == pytest.approx(spread, rel=1e-6)
    assert loss.total.item() == pytest.approx(consistency - 5 * spread, rel=1e-6)  # -2.03421...
    # Swapping the branches keeps the (symmetric) consistency but takes the other branch's entropy.
    swapped = scan_loss(pn.log(), pa.log(), entropy_weight=5.0)
    assert swapped.consistency.item() == pytest.approx(consistency, rel=1e-6)
    assert swapped.entropy.item() == pytest.approx(-(0.35 * math.log(0.35) + 0.65 * math.log(0.65)), rel=1e-6)
    # Three clusters, three rows, another weight; logits shifted per row (softmax ignores a constant).
    pa3 = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    pn3 = torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.6, 0.2], [0.0, 0.5, 0.5]])
    loss3 = scan_loss(pa3.log() + torch.tensor([[1.0], [-2.0], [0.5]]), pn3.clamp_min(1e-30).log(),
                      entropy_weight=2.0)
    # <.,.> per row: 0.3125, 0.52, 0.4; mean anchor prediction (0.8/3, 1.25/3, 0.95/3).
    consistency3 = -(math.log(0.3125) + math.log(0.52) + math.log(0.4)) / 3
    spread3 = -sum(m * math.log(m) for m in (0.8 / 3, 1.25 / 3, 0.95 / 3))
    assert loss3.consistency.item() == pytest.approx(consistency3, rel=1e-6)
    assert loss3.entropy.item() == pytest.approx(spread3, rel=1e-6)
    assert loss3.total.item() == pytest.approx(consistency3 - 2 * spread3, rel=1e-6)


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
    nb = mine_neighbors(x, n_neighbors=10)
    config = ScanConfig(n_clusters=4, n_heads=3, epochs=15, batch_size=100, lr=1e-2)
    result = train_scan_features(x, nb, config, out_dir=tmp_path, show_progress=False)
    assert evaluate(y, result.predictions)["acc"] > 0.95
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
    nb = mine_neighbors(x, n_neighbors=5)
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
    import re

    from sklearn.datasets import load_digits

    from nolabel.cli import main
    from nolabel.clustering import load_clustering
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
    held = load_clustering(tmp_path / "scan").assignments["heldout"].cluster
    assert re.search(r"\nheldout +fit_on_eval +500 +0\.\d{4}", out) and held.shape == (500,)
    np.testing.assert_array_equal(held, np.load(tmp_path / "scan" / "probabilities_heldout.npy").argmax(1))
    # The noise moves few of them to another cluster than the training assigned.
    assert np.mean(held == np.load(tmp_path / "scan" / "predictions.npy")[:500]) > 0.9
    summary = __import__("json").loads((tmp_path / "scan" / "metrics.json").read_text())
    assert summary["train"]["fit_on_eval"]["acc"] > 0.6  # k-means on these pixels reaches ~0.7-0.8
    assert np.load(tmp_path / "scan" / "predictions.npy").shape == (len(x),)
    # Refuses to overwrite without --force.
    assert main(["scan", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "scan"), "--quiet"]) == 2
    assert main(["selflabel", "--scan", str(tmp_path / "scan"), "--features", str(tmp_path / "feats"),
                 "--augmented", str(tmp_path / "aug"), "--out", str(tmp_path / "sl"), "--epochs", "3",
                 "--threshold", "0.9", "--eval-features", str(tmp_path / "heldout"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\ntrain +fit_on_eval +1797 +0\.\d{4}", out)
    assert re.search(r"\nheldout +fit_on_eval +500 +0\.\d{4}", out)
    assert load_clustering(tmp_path / "sl").assignments["heldout"].cluster.shape == (500,)
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
nb = mine_neighbors(x, n_neighbors=8)
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
    assert evaluate(y, pred)["acc"] > 0.95
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
    nb = mine_neighbors(images.reshape(len(images), -1).astype(np.float32), n_neighbors=5)
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
    trained = read_json(tmp_path / "sl" / "selflabel.json")
    assert trained["mode"] == "network" and summary["train"]["n"] == 1797 and not trained["skipped"]
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
    config = ScanConfig(n_clusters=10, n_heads=2, epochs=30, batch_size=256, lr=1e-2, hidden_dim=64, n_neighbors=10)
    summary = run_scan(tmp_path / "scan", features=tmp_path / "feats", augmented=[tmp_path / "aug"],
                       pca_components=16, config=config, show_progress=False)
    assert read_json(tmp_path / "scan" / "scan.json")["pca_components"] == 16
    assert summary["train"]["fit_on_eval"]["acc"] > 0.6
    heads, _, _ = load_scan(tmp_path / "scan" / "scan.pt")
    assert heads.in_dim == 16
    # Neighbours were mined in the PCA space: compare with scikit-learn's PCA (float64).
    reference = mine_neighbors(SkPCA(16).fit_transform(x.astype(np.float64)).astype(np.float32), n_neighbors=10)
    mined = np.load(tmp_path / "scan" / "neighbors.npy")
    same = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(mined, reference)])
    assert same > 0.97
    # Self-labeling projects its features with the saved PCA (16-d heads on 64-d features would fail).
    sl = run_selflabel(tmp_path / "scan", tmp_path / "sl", features=tmp_path / "feats",
                       augmented=[tmp_path / "aug"], config=SelfLabelConfig(threshold=0.9, epochs=2, lr=1e-3),
                       show_progress=False)
    assert sl["train"]["fit_on_eval"]["acc"] > 0.6
    # Assigning images later goes through the same PCA and head (or its self-labeled version).
    np.testing.assert_allclose(predict_scan(tmp_path / "scan", features=tmp_path / "feats"),
                               np.load(tmp_path / "scan" / "probabilities.npy"), atol=1e-6)
    np.testing.assert_allclose(predict_scan(tmp_path / "scan", features=tmp_path / "feats", selflabel_dir=tmp_path / "sl"),
                               np.load(tmp_path / "sl" / "probabilities.npy"), atol=1e-6)
    # Recomputing the folder without PCA removes it, so self-labeling sees the features as they are.
    run_scan(tmp_path / "scan", features=tmp_path / "feats", config=config, force=True,
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
    with pytest.raises(NolabelError, match="device: 'gpu' is not one of auto, cpu, cuda"):
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
    nb = mine_neighbors(x, n_neighbors=10)
    config = ScanConfig(n_clusters=4, n_heads=2, epochs=20, batch_size=100, lr=1e-2, hidden_dim=32, device="cuda")
    result = train_scan_features(x, nb, config, out_dir=tmp_path / "scan", show_progress=False)
    assert evaluate(y, result.predictions)["acc"] > 0.95
    assert all(p.device.type == "cpu" for p in result.heads.parameters())
    head = result.heads.single(result.best_head)
    sl = train_selflabel_features(x, head, result.probabilities,
                                  SelfLabelConfig(threshold=0.9, epochs=2, lr=1e-3, device="cuda"),
                                  out_dir=tmp_path / "sl", show_progress=False)
    assert evaluate(y, sl.predictions)["acc"] > 0.95
    assert all(p.device.type == "cpu" for p in head.parameters())


# ---------------------------------------------------------------- whole-dataset loss in chunks, head selection

def _dense_scan_loss(p: np.ndarray, nb: np.ndarray, entropy_weight: float) -> dict[str, float]:
    """The whole-dataset SCAN loss as one dense float64 (N, M, K) computation, independent of the library."""
    p = np.asarray(p, dtype=np.float64)
    agreement = (p[:, None, :] * p[nb]).sum(-1)
    consistency = float(-np.log(np.maximum(agreement, 1e-8)).mean())
    mean = p.mean(0)
    spread = float(-(mean * np.log(np.maximum(mean, 1e-8))).sum())
    return {"total": consistency - entropy_weight * spread, "consistency": consistency, "entropy": spread}


def _random_probabilities(rng, n: int, k: int, sharpness: float = 3.0) -> np.ndarray:
    p = np.exp(rng.normal(size=(n, k)) * sharpness)
    p /= p.sum(1, keepdims=True)
    p[0] = 0.0
    p[0, 0] = 1.0  # a one-hot row: 0 log 0 in the mean, and agreements below the 1e-8 floor
    p[1] = 0.0
    p[1, -1] = 1.0
    return p


def _assert_loss_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == {"total", "consistency", "entropy"}
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_whole_dataset_loss_equals_a_dense_float64_computation(dtype):
    rng = np.random.default_rng(3)
    n, k, m = 41, 7, 6
    p = _random_probabilities(rng, n, k).astype(dtype)
    nb = rng.integers(0, n, (n, m))
    nb[0, 0], nb[1, 0] = 1, 0  # the two one-hot rows are neighbours: agreement 0, clamped
    want = _dense_scan_loss(p, nb, 2.5)  # on the float64 values of the very same (maybe float32) numbers
    for chunk_rows in (1, 2, 5, n, n + 100, None):
        _assert_loss_close(scan_loss_of_probabilities(p, nb, 2.5, chunk_rows=chunk_rows), want)
    _assert_loss_close(scan_loss_of_probabilities(p, nb, 2.5, memory_bytes=1), want)  # one row at a time
    _assert_loss_close(scan_loss_of_probabilities(torch.from_numpy(p), nb.astype(np.int32), 2.5), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memory_mapped_probabilities_scored_in_blocks_equal_the_dense_computation(tmp_path, dtype):
    rng = np.random.default_rng(4)
    n, k, m = 53, 5, 4
    p = _random_probabilities(rng, n, k).astype(dtype)
    nb = rng.integers(0, n, (n, m))
    np.save(tmp_path / "p.npy", p)
    mapped = np.load(tmp_path / "p.npy", mmap_mode="r")
    want = _dense_scan_loss(p, nb, 5.0)
    row = k * p.itemsize
    # a block of 1 row, of 2, 3 (N not a multiple), 10; and one block holding every row
    for block_bytes in (1, 2 * row, 3 * row, 10 * row, n * row):
        for chunk_rows in (1, 3, None):
            _assert_loss_close(scan_loss_of_probabilities(mapped, nb, 5.0, chunk_rows=chunk_rows,
                                                          block_bytes=block_bytes), want)


def test_whole_dataset_loss_rejects_neighbour_indices_out_of_range():
    p = np.full((4, 2), 0.5)
    for bad in ([[1], [2], [3], [4]], [[1], [2], [3], [-1]]):
        with pytest.raises(NolabelError, match="neighbour indices"):
            scan_loss_of_probabilities(p, np.array(bad), 1.0)


def test_head_chosen_is_the_one_with_the_lowest_dense_total():
    rng = np.random.default_rng(5)
    n, k, m = 60, 6, 5
    truth = rng.integers(0, k, n)
    nb = np.stack([rng.choice(np.flatnonzero(truth == truth[i]), m) for i in range(n)])
    heads = []
    for noise in (3.0, 0.3, 1.0, 6.0):  # the neighbours share a cluster: the least noisy head wins
        logits = np.eye(k)[truth] * 4 + rng.normal(size=(n, k)) * noise
        heads.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    dense = [_dense_scan_loss(p, nb, 5.0)["total"] for p in heads]
    losses = [scan_loss_of_probabilities(p.astype(np.float32), nb, 5.0, chunk_rows=7) for p in heads]
    assert select_head(losses) == int(np.argmin(dense)) == 1
    # a diverged head (NaN loss) is never chosen
    assert select_head([{"total": float("nan")}] + losses) == 2


def test_streamed_head_selection_equals_the_in_memory_one(tmp_path, monkeypatch):
    from nolabel.cluster.scan import loss, train

    x, _ = _blobs(n_per=60)
    nb = mine_neighbors(x, n_neighbors=8)
    config = ScanConfig(n_clusters=4, n_heads=3, epochs=2, batch_size=60, lr=1e-2)
    in_memory = train_scan_features(x, nb, config, show_progress=False)
    # ImageNet's path: each head predicted to a scratch file in out_dir, scored from it in blocks
    monkeypatch.setattr(train, "HEAD_SELECTION_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(loss, "LOSS_BLOCK_BYTES", 7 * 4 * 4)
    streamed = train_scan_features(x, nb, config, out_dir=tmp_path, show_progress=False)
    assert isinstance(streamed.probabilities, np.memmap) and streamed.probabilities.dtype == np.float32
    np.testing.assert_array_equal(streamed.probabilities, in_memory.probabilities)
    assert streamed.best_head == in_memory.best_head
    for got, want in zip(streamed.head_losses, in_memory.head_losses):
        _assert_loss_close(got, want)
    assert not list(tmp_path.glob(".scan-head*"))  # no scratch file left behind
    dense = [_dense_scan_loss(p, nb, config.entropy_weight)["total"]
             for p in train._predict(streamed.heads, train.FeatureInputs(x), len(x), 512, False)]
    assert streamed.best_head == int(np.argmin(dense))


def test_scan_stage_reuses_neighbours_only_from_the_same_features_and_count(tmp_path):
    from sklearn.datasets import load_digits

    from nolabel.cluster.scan import run_scan
    from nolabel.store import write_store

    digits = load_digits()
    x = (digits.data / 16).astype(np.float32)
    items = [f"all/{i}" for i in range(len(x))]
    write_store(tmp_path / "feats", x, digits.target, items, {"model": "pixels"})
    write_store(tmp_path / "other", x[::-1].copy(), digits.target[::-1], items[::-1], {"model": "pixels"})
    config = ScanConfig(n_clusters=10, n_heads=1, epochs=1, batch_size=256, lr=1e-2, device="cpu")
    scan_dir = tmp_path / "scan"
    neighbors = scan_dir / "neighbors.npy"

    def train(features="feats", k=5, **settings):
        return run_scan(scan_dir, features=tmp_path / features, force=True, show_progress=False,
                        config=ScanConfig(**{**config.__dict__, "n_neighbors": k, **settings}))

    first = train()
    mined, finished = neighbors.stat().st_mtime_ns, (scan_dir / "scan.json").stat().st_mtime_ns
    assert train() == first  # the same inputs: the finished result, kept as it is
    assert (scan_dir / "scan.json").stat().st_mtime_ns == finished
    train(epochs=2)  # other training settings: SCAN is redone, on the same neighbours
    assert neighbors.stat().st_mtime_ns == mined
    train(epochs=2, k=7)  # another count: mined again
    assert np.load(neighbors).shape == (len(x), 7)
    remined = neighbors.stat().st_mtime_ns
    assert remined != mined
    train(features="other", epochs=2, k=7)  # other features, same count: mined again
    assert neighbors.stat().st_mtime_ns != remined
    np.testing.assert_array_equal(np.load(neighbors)[-1], len(x) - 1 - mine_neighbors(x, n_neighbors=7)[0])
