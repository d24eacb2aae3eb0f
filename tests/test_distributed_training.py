"""SCAN and self-labeling under torchrun (2 gloo processes) train exactly what one process trains on
the same global batches, and every replica takes the same steps - also when one process's share of
a batch holds no confident sample."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from distributed_helpers import run_torchrun

from nolabel.cluster.neighbors import mine_neighbors
from nolabel.cluster.scan import ScanConfig, train_scan_features
from nolabel.cluster.selflabel import SelfLabelConfig, train_selflabel_features

SCAN = ScanConfig(n_clusters=3, n_heads=2, epochs=3, batch_size=60, lr=1e-2, device="cpu")
# one step on one batch of all 64 rows: the second half of its (seeded) order goes to rank 1
SELFLABEL = SelfLabelConfig(threshold=0.9, epochs=1, batch_size=64, lr=1e-2, entropy_weight=0.5, device="cpu")

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])  # the tests folder: this module's settings and head
    import numpy as np, torch
    torch.set_num_threads(1)
    from nolabel import distributed
    from nolabel.cluster.scan import ScanConfig, train_scan_features
    from nolabel.cluster.selflabel import SelfLabelConfig, train_selflabel_features
    from test_distributed_training import SCAN, SELFLABEL, head_for

    assert distributed.init() and distributed.world_size() == 2
    folder = sys.argv[1]
    data = np.load(folder + "/data.npz")

    def flat(module):
        return torch.cat([p.detach().flatten() for p in module.parameters()])

    def same_on_both_ranks(weights):
        gathered = [torch.zeros_like(weights) for _ in range(2)]
        torch.distributed.all_gather(gathered, weights)
        return torch.equal(gathered[0], gathered[1])

    scan = train_scan_features(data["x"], data["nb"], SCAN, augmented=data["aug"], show_progress=False)
    head = head_for(data["y"])
    selflabel = train_selflabel_features(data["x2"], head, data["p2"], SELFLABEL, show_progress=False)
    results = {"scan": flat(scan.heads), "selflabel": flat(head)}
    identical = {name: same_on_both_ranks(w) for name, w in results.items()}
    if distributed.is_main():
        np.savez(folder + "/ranks.npz", **{k: v.numpy() for k, v in results.items()},
                 identical=np.array([identical["scan"], identical["selflabel"]]),
                 scan_history=np.array([h["loss"] for h in scan.history]))
""")


def head_for(y: np.ndarray) -> nn.Module:
    """A linear head that is confident on rows scaled along their class's axis and uniform on zeros."""
    head = nn.Linear(3, 3)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3) * 4)
        head.bias.zero_()
    return head


def _data(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 4
    x = np.concatenate([c + rng.normal(size=(80, 6)) for c in centers]).astype(np.float32)
    aug = np.stack([x + rng.normal(0, 0.3, x.shape).astype(np.float32) for _ in range(2)])
    # self-labeling: rows 0..63 of 3 classes; the rows the seeded order hands to rank 1 are all zeros
    y = np.arange(64) % 3
    x2 = np.eye(3, dtype=np.float32)[y] * 2
    order = torch.randperm(64, generator=torch.Generator().manual_seed(SELFLABEL.random_state)).numpy()
    x2[order[32:]] = 0
    with torch.no_grad():
        p2 = torch.softmax(head_for(y)(torch.from_numpy(x2)), 1).numpy()
    assert (p2[order[:32]].max(1) > SELFLABEL.threshold).all() and (p2[order[32:]].max(1) < 0.5).all()
    data = {"x": x, "aug": aug, "nb": mine_neighbors(x, n_neighbors=8), "x2": x2, "p2": p2, "y": y}
    np.savez(tmp_path / "data.npz", **data)
    return data


def test_two_processes_train_what_one_process_trains(tmp_path):
    data = _data(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = run_torchrun(script, str(tmp_path), str(Path(__file__).parent))
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = np.load(tmp_path / "ranks.npz")
    # every replica took the same steps: bit-identical weights on both ranks, for SCAN and for
    # self-labeling, where rank 1's half of the batch had no confident sample
    assert ranks["identical"].all()

    torch.set_num_threads(1)
    scan = train_scan_features(data["x"], data["nb"], SCAN, augmented=data["aug"], show_progress=False)
    head = head_for(data["y"])
    initial = torch.cat([p.detach().flatten() for p in head.parameters()]).numpy()
    train_selflabel_features(data["x2"], head, data["p2"], SELFLABEL, show_progress=False)
    single = {"scan": torch.cat([p.detach().flatten() for p in scan.heads.parameters()]).numpy(),
              "selflabel": torch.cat([p.detach().flatten() for p in head.parameters()]).numpy()}
    # ... and the result of one process on the same batches (up to float summation order)
    np.testing.assert_allclose(ranks["scan"], single["scan"], rtol=0, atol=2e-5)
    np.testing.assert_allclose(ranks["scan_history"], [h["loss"] for h in scan.history], rtol=1e-5)
    np.testing.assert_allclose(ranks["selflabel"], single["selflabel"], rtol=0, atol=2e-6)
    assert np.abs(single["selflabel"] - initial).max() > 1e-3  # the step did happen


@pytest.mark.parametrize("batch_size", [None, 7])
def test_scan_loss_in_one_process_is_the_batch_mean(batch_size):
    """`batch_size` only matters under torchrun; in one process the objective is the total."""
    from nolabel.cluster.scan import scan_loss

    a, b = torch.randn(7, 4, requires_grad=True), torch.randn(7, 4)
    loss = scan_loss(a, b, 2.0, batch_size=batch_size)
    p, q = torch.softmax(a, 1), torch.softmax(b, 1)
    consistency = -torch.log((p * q).sum(1)).mean()
    mean = p.mean(0)
    expected = consistency + 2.0 * (mean * mean.log()).sum()
    torch.testing.assert_close(loss.total, expected)
    assert loss.objective is loss.total
