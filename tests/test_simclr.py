import numpy as np
import pytest
import torch

from nolabel.models import create
from nolabel.pretrain import SimCLRConfig, extract_features, nt_xent_loss, train_simclr, weighted_knn_predict


def test_nt_xent_hand_computed():
    # Two images, unit vectors: views of image 0 are e0 and e0, of image 1 are e1 and -e1.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    t = 0.5
    # Similarities over the 4 views [e0, e1, e0, -e1].
    s = torch.tensor([[1, 0, 1, 0], [0, 1, 0, -1], [1, 0, 1, 0], [0, -1, 0, 1]], dtype=torch.float)
    positives = [2, 3, 0, 1]
    expected = 0.0
    for i in range(4):
        others = [j for j in range(4) if j != i]
        expected += -(s[i, positives[i]] / t - torch.logsumexp(s[i, others] / t, 0))
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(expected.item() / 4, rel=1e-6)
    # Scale does not matter (cosine similarity).
    assert nt_xent_loss(3 * z1, 0.5 * z2, t).item() == pytest.approx(expected.item() / 4, rel=1e-6)


def test_nt_xent_is_lower_for_matching_views():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    assert nt_xent_loss(z, z + 0.01 * torch.randn(16, 8)) < nt_xent_loss(z, torch.randn(16, 8))


def test_weighted_knn_votes_by_similarity():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    pred = weighted_knn_predict(bank, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), n_classes=2, k=3)
    assert pred.tolist() == [0, 1]


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255 / 16)).astype(np.uint8), d.target


def _config(**kw):
    return SimCLRConfig(model="cnn28", epochs=2, batch_size=128, lr=0.1, image_size=16, monitor_size=300,
                        monitor_bank=600, knn_k=20, **kw)


def test_training_writes_a_checkpoint_that_create_loads(tmp_path):
    images, labels = _digits()
    images, labels = images[:600], labels[:600]
    result = train_simclr(images, tmp_path, _config(), labels=labels, show_progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert 0.3 < result.history[-1]["knn_acc"] <= 1.0  # far above chance (0.1) even after 2 epochs
    loaded = create("cnn28", weights=tmp_path / "backbone.pt")
    assert loaded.load_report is not None
    a = extract_features(result.backbone, images[:50], image_size=16)
    b = extract_features(loaded, images[:50], image_size=16)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert (tmp_path / "history.json").exists()


def test_resume_continues_exactly(tmp_path, monkeypatch):
    from test_scan import interrupt_after

    images = _digits()[0][:300]
    full = train_simclr(images, tmp_path / "full", _config(), show_progress=False)
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train_simclr(images, tmp_path / "resumed", _config(), show_progress=False)
    resumed = train_simclr(images, tmp_path / "resumed", _config(), show_progress=False)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-5)
    for a, b in zip(full.backbone.state_dict().values(), resumed.backbone.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # A finished run returns at once with its history.
    again = train_simclr(images, tmp_path / "resumed", _config(), show_progress=False)
    assert len(again.history) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_force_with_an_unavailable_device_keeps_the_finished_pretext(tmp_path):
    from nolabel.errors import NolabelError
    from nolabel.pretrain import pretrain_simclr

    (tmp_path / "backbone.pt").write_bytes(b"a finished run")
    with pytest.raises(NolabelError, match="no CUDA device is visible"):
        pretrain_simclr("digits", tmp_path, SimCLRConfig(epochs=1, image_size=16, device="cuda"), force=True)
    assert (tmp_path / "backbone.pt").read_bytes() == b"a finished run"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_training_on_the_gpu_hands_back_a_cpu_backbone_that_matches_its_checkpoint(tmp_path):
    images, labels = _digits()
    images, labels = images[:600], labels[:600]
    result = train_simclr(images, tmp_path, _config(device="cuda"), labels=labels, show_progress=False)
    assert 0.3 < result.history[-1]["knn_acc"] <= 1.0
    assert all(p.device.type == "cpu" for p in result.backbone.parameters())
    loaded = create("cnn28", weights=tmp_path / "backbone.pt")
    np.testing.assert_allclose(extract_features(result.backbone, images[:50], image_size=16),
                               extract_features(loaded, images[:50], image_size=16), atol=1e-5)
