import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nolabel.cluster.selflabel import SelfLabelConfig, self_label_loss, train_selflabel_features


def test_loss_masks_unconfident_samples_and_balances_classes():
    clean = torch.tensor([[10.0, 0.0], [10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, 0.1]])
    strong = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [5.0, 0.0]])
    loss, n = self_label_loss(clean, strong, threshold=0.99, class_balance=True)
    assert n == 4  # the last sample is not confident
    ce = F.cross_entropy(strong[:4], torch.tensor([0, 0, 0, 1]), reduction="none")
    # 3 samples of class 0, 1 of class 1: each class counts half.
    expected = (ce[:3].mean() + ce[3]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    plain, _ = self_label_loss(clean, strong, threshold=0.99, class_balance=False)
    assert plain.item() == pytest.approx(ce.mean().item(), rel=1e-6)
    spread, _ = self_label_loss(clean, strong, threshold=0.99, class_balance=False, entropy_weight=2.0)
    mean = F.softmax(strong, 1).mean(0)  # over all 5 samples, confident or not
    assert spread.item() == pytest.approx(plain.item() + 2.0 * (mean * mean.log()).sum().item(), rel=1e-6)


def test_no_confident_sample_keeps_the_scan_result_and_says_so(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    scan_probs = np.full((64, 3), 1 / 3)
    head = nn.Linear(5, 3)
    before = [p.detach().clone() for p in head.parameters()]
    result = train_selflabel_features(x, head, scan_probs, SelfLabelConfig(epochs=2, batch_size=16),
                                      out_dir=tmp_path, show_progress=False)
    assert result.skipped and result.confident_fraction == 0.0
    np.testing.assert_array_equal(result.probabilities, scan_probs)
    assert "no sample has confidence above 0.99" in result.message
    assert "kept the SCAN result" in capsys.readouterr().out
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters()))


def _confident_setup(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], 40)
    x = (np.eye(3)[y] * 4 + rng.normal(scale=0.3, size=(120, 3))).astype(np.float32)
    torch.manual_seed(seed)
    head = nn.Linear(3, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3) * 0.75)
        head.bias.zero_()
    with torch.no_grad():
        probs = F.softmax(head(torch.from_numpy(x)), 1).numpy()
    return x, y, head, probs


def test_self_labeling_sharpens_confident_clusters():
    x, y, head, probs = _confident_setup()
    augmented = np.stack([x + np.float32(0.2), x - np.float32(0.2)])
    result = train_selflabel_features(x, head, probs, SelfLabelConfig(threshold=0.9, epochs=5, batch_size=40, lr=1e-2),
                                      augmented=augmented, show_progress=False)
    assert not result.skipped and 0 < result.confident_fraction < 1
    assert (result.predictions == y).all()
    assert result.probabilities.max(1).mean() > probs.max(1).mean()


def test_resume_continues_exactly(tmp_path, monkeypatch):
    from test_scan import interrupt_after

    config = SelfLabelConfig(threshold=0.9, epochs=3, batch_size=40, lr=1e-2, ema_decay=0.9)
    x, _, head, probs = _confident_setup()
    full = train_selflabel_features(x, head, probs, config, out_dir=tmp_path / "full", show_progress=False)
    x, _, head, probs = _confident_setup()
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train_selflabel_features(x, head, probs, config, out_dir=tmp_path / "resumed", show_progress=False)
    x, _, head, probs = _confident_setup()
    resumed = train_selflabel_features(x, head, probs, config, out_dir=tmp_path / "resumed", show_progress=False)
    assert resumed.history == full.history
    np.testing.assert_allclose(resumed.probabilities, full.probabilities, atol=1e-6)
