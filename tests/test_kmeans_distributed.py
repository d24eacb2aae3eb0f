"""Two gloo processes under torchrun give the same k-means as one process, bit for bit."""
import textwrap

import numpy as np
from distributed_helpers import run_torchrun

from nolabel.cluster import KMeans
from nolabel.cluster.kmeans import CHUNK_SIZE

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from nolabel import distributed
    from nolabel.cluster import KMeans

    X = np.load(sys.argv[1], mmap_mode="r")
    plain = KMeans(12, n_init=1, max_iter=15, random_state=1).fit(X)
    spherical = KMeans(12, n_init=1, max_iter=15, random_state=1, spherical=True).fit(X)
    if distributed.is_main():
        np.savez(sys.argv[2], world=distributed.world_size(),
                 centers=plain.cluster_centers_, labels=plain.labels_, inertia=plain.inertia_,
                 n_iter=plain.n_iter_, spherical_centers=spherical.cluster_centers_,
                 spherical_labels=spherical.labels_)
""")


def test_two_processes_equal_one(tmp_path):
    rng = np.random.default_rng(0)
    n = 2 * CHUNK_SIZE + 5000  # three chunks: one for the first process, two for the second
    centers = rng.standard_normal((15, 8)) * 2
    X = (centers[rng.integers(0, 15, n)] + rng.standard_normal((n, 8))).astype(np.float16)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "fit.py").write_text(SCRIPT)
    run = run_torchrun(tmp_path / "fit.py", tmp_path / "x.npy", tmp_path / "out.npz", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    result = np.load(tmp_path / "out.npz")
    assert int(result["world"]) == 2

    X = np.load(tmp_path / "x.npy", mmap_mode="r")
    plain = KMeans(12, n_init=1, max_iter=15, random_state=1).fit(X)
    spherical = KMeans(12, n_init=1, max_iter=15, random_state=1, spherical=True).fit(X)
    np.testing.assert_array_equal(result["centers"], plain.cluster_centers_)
    np.testing.assert_array_equal(result["labels"], plain.labels_)
    assert float(result["inertia"]) == plain.inertia_
    assert int(result["n_iter"]) == plain.n_iter_
    np.testing.assert_array_equal(result["spherical_centers"], spherical.cluster_centers_)
    np.testing.assert_array_equal(result["spherical_labels"], spherical.labels_)
