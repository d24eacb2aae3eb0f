"""The package's one namespace, and what importing its parts loads."""
from __future__ import annotations

import subprocess
import sys

import nolabel


def test_every_public_name_resolves_to_the_stage_it_names():
    from nolabel.cluster.kmeans import KMeans
    from nolabel.cluster.scan.estimator import SCAN
    from nolabel.clustering import assign, load_clustering
    from nolabel.data import load
    from nolabel.metrics import evaluate
    from nolabel.models import create
    from nolabel.pipeline import run

    assert (nolabel.load_dataset, nolabel.create_model, nolabel.KMeans, nolabel.SCAN, nolabel.evaluate,
            nolabel.run, nolabel.load_clustering, nolabel.assign) == (
        load, create, KMeans, SCAN, evaluate, run, load_clustering, assign)
    for name in nolabel.__all__:
        assert getattr(nolabel, name) is not None
    assert set(nolabel.__all__) <= set(dir(nolabel))


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('nolabel')))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
               .stdout.split())


def test_imports_stay_light():
    # the package and the command line's parser load no stage
    assert _loaded_after("import nolabel") == {"nolabel"}
    # reading a run configuration imports no training code
    assert _loaded_after("import nolabel.config") == {"nolabel", "nolabel.config", "nolabel.errors"}
    # the PCA + k-means stage loads no training, SCAN or pretraining module
    loaded = _loaded_after("import nolabel.cluster.pca_kmeans")
    training = {m for m in loaded if any(k in m for k in ("training", "pretrain", "scan", "selflabel", "models"))}
    assert training == set(), training
