"""Training functions seed their own work (`nolabel.training.seeded`), never the caller's RNG state."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from nolabel.cluster.neighbors import mine_neighbors
from nolabel.cluster.scan import ScanConfig, train_scan_features, train_scan_network
from nolabel.cluster.selflabel import SelfLabelConfig, train_selflabel_features, train_selflabel_network
from nolabel.config import DeepClusterConfig, SimCLRConfig
from nolabel.pretrain.deepcluster import train_deepcluster
from nolabel.pretrain.simclr import train_simclr
from nolabel.training import seeded


def _weights(module: nn.Module) -> list[torch.Tensor]:
    return [v.detach().clone() for v in module.state_dict().values()]


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b))


def _twice(train):
    """Run `train()` under two different caller RNG states: each run must leave the caller's state as
    it found it, and both must give the same result (it depends on random_state alone)."""
    results = []
    for caller_seed in (1234, 99):
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        results.append(train())
        assert torch.equal(torch.get_rng_state(), before), "the caller's torch RNG state changed"
    assert _same(*results), "the result depends on the caller's RNG state"
    return results[0]


class _DropoutBackbone(nn.Module):
    """A tiny backbone whose training draws from torch's global RNG (dropout)."""

    feature_dim, input_size, mean, std = 16, 8, (0.5,), (0.5,)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 16))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 8)) * 4
    x = np.concatenate([c + rng.normal(size=(60, 8)) for c in centers]).astype(np.float32)
    augmented = (x[None] + rng.normal(size=(2, *x.shape)) * 0.3).astype(np.float32)
    return x, augmented, mine_neighbors(x, 10)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.images[:256] * (255 / 16)).round().astype(np.uint8)


def test_seeded_restores_the_callers_state_and_draws_from_the_seed():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    with seeded(3):
        inside = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(3)
    assert torch.equal(inside, torch.rand(4))
    torch.manual_seed(5)
    with pytest.raises(RuntimeError):
        with seeded(3):
            torch.rand(4)
            raise RuntimeError("training failed")
    assert torch.equal(torch.get_rng_state(), before)


def test_scan_and_selflabel_on_features(blobs):
    x, augmented, nb = blobs
    config = ScanConfig(n_clusters=4, n_heads=2, epochs=3, batch_size=60, lr=1e-2, hidden_dim=16, device="cpu")
    runs = []

    def scan():
        runs.append(train_scan_features(x, nb, config, augmented=augmented, show_progress=False))
        return [runs[-1].probabilities, *_weights(runs[-1].heads)]

    _twice(scan)
    scanned = runs[0]

    def selflabel():  # trains a copy of the kept head (self-labeling trains it in place)
        head = copy.deepcopy(scanned.heads.single(scanned.best_head))
        r = train_selflabel_features(x, head, scanned.probabilities,
                                     SelfLabelConfig(threshold=0.5, epochs=2, batch_size=40, lr=1e-2, device="cpu"),
                                     augmented=augmented, show_progress=False)
        assert not r.skipped
        return [r.probabilities, *_weights(head)]

    _twice(selflabel)


def test_scan_and_selflabel_on_a_network_with_dropout(digits):
    torch.manual_seed(7)
    initial = _DropoutBackbone()
    nb = mine_neighbors(digits.reshape(len(digits), -1).astype(np.float32), 5)
    runs = []

    def scan():
        backbone = copy.deepcopy(initial)
        runs.append(train_scan_network(digits, backbone, nb, ScanConfig(n_clusters=5, n_heads=2, epochs=2, batch_size=64,
                                                                       device="cpu"), show_progress=False))
        runs[-1].backbone = backbone
        return [runs[-1].probabilities, *_weights(backbone), *_weights(runs[-1].heads)]

    _twice(scan)
    scanned = runs[0]
    threshold = float(np.median(scanned.probabilities.max(1)))

    def selflabel():
        backbone = copy.deepcopy(scanned.backbone)
        head = copy.deepcopy(scanned.heads.single(scanned.best_head))
        r = train_selflabel_network(digits, backbone, head, scanned.probabilities,
                                    SelfLabelConfig(threshold=threshold, epochs=1, batch_size=64, device="cpu"),
                                    show_progress=False)
        assert not r.skipped
        return [r.probabilities, *_weights(backbone), *_weights(head)]

    _twice(selflabel)


def test_simclr(digits, tmp_path):
    runs = iter(range(2))

    def simclr():
        config = SimCLRConfig(model="cnn28", epochs=1, batch_size=128, lr=0.1, image_size=16, device="cpu")
        return _weights(train_simclr(digits, tmp_path / str(next(runs)), config, show_progress=False).backbone)

    _twice(simclr)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_deepcluster(digits, tmp_path, version):
    runs = iter(range(2))

    def deepcluster():
        config = DeepClusterConfig(version=version, model="cnn28", n_clusters=8, heads=2, epochs=1, batch_size=64,
                                   image_size=16)
        return _weights(train_deepcluster(digits, tmp_path / str(next(runs)), config, show_progress=False).backbone)

    _twice(deepcluster)
