"""`SCAN`: SCAN's heads on frozen features as a scikit-learn clusterer.

    from sklearn.pipeline import make_pipeline
    from sklearn.decomposition import PCA
    from nolabel.cluster import SCAN

    labels = make_pipeline(PCA(64), SCAN(n_clusters=10)).fit_predict(features)  # features (N, D)

`fit` mines every row's `n_neighbors` cosine neighbours (faiss, `mine_neighbors`) and trains the
heads with `train_scan_features`, in memory (no files). The estimator is the features mode only;
whole-network SCAN on images is `train_scan_network` / `nolabel scan --data`.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted

from ...config import SCAN_FEATURES_LR, ScanConfig
from ...errors import NolabelError, NolabelValueError
from .._params import check_integers, integer_seed
from ..neighbors import mine_neighbors
from .train import train_scan_features

_DEFAULTS = ScanConfig()


class SCAN(ClusterMixin, BaseEstimator):
    """SCAN clustering heads trained on frozen features X (N, D) (Van Gansbeke et al. 2020).

    Parameters are `ScanConfig`'s fields, with its defaults but one: `lr` defaults to
    `SCAN_FEATURES_LR` (1e-3), the learning rate for heads on frozen features (ScanConfig's 1e-4 is
    the whole-network one), as `nolabel scan --features` uses. `random_state` is an int (also None
    or a RandomState, which draw one); `device` "auto" trains on a GPU when one is visible.

    Small data: the batch is clipped to N samples (`batch_size` > N trains one full batch per
    epoch), `n_neighbors` to N - 1; `n_clusters` > N raises ValueError, and `n_clusters=1` puts every
    sample in cluster 0 with nothing trained (`heads_` is None then).

    Attributes after `fit`: `heads_` (`ClusterHeads`, on the CPU, eval mode), `best_head_` (the head
    of lowest SCAN loss over the whole dataset, used by `predict`), `head_losses_` (every head's
    loss terms), `labels_` (N,) int64, `history_` (per-epoch losses), `n_features_in_`. `labels_`
    come from head selection, run where training ran; `predict` runs on the CPU in float32, so
    `predict(X)` equals `labels_` there (on a GPU or with bf16, up to near-ties).
    """

    def __init__(self, n_clusters: int = _DEFAULTS.n_clusters, n_heads: int = _DEFAULTS.n_heads,
                 entropy_weight: float = _DEFAULTS.entropy_weight, epochs: int = _DEFAULTS.epochs,
                 batch_size: int = _DEFAULTS.batch_size, lr: float = SCAN_FEATURES_LR,
                 weight_decay: float = _DEFAULTS.weight_decay, hidden_dim: int = _DEFAULTS.hidden_dim,
                 n_neighbors: int = _DEFAULTS.n_neighbors, random_state=_DEFAULTS.random_state,
                 bf16: bool = _DEFAULTS.bf16, device: str = _DEFAULTS.device):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.entropy_weight = entropy_weight
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.hidden_dim = hidden_dim
        self.n_neighbors = n_neighbors
        self.random_state = random_state
        self.bf16 = bf16
        self.device = device

    def fit(self, X, y=None, augmented=None) -> "SCAN":
        """Mine neighbours in X (N, D) and train the heads; `y` is ignored.

        augmented: optional (V, N, D) features of V augmented views of every row, in X's space (in a
        Pipeline: already through the steps before SCAN), drawn from during training.
        """
        X = self._validate(X, reset=True)
        n = len(X)
        config = self._config(n)
        if not 1 <= self.n_clusters <= n:
            raise NolabelValueError(f"n_clusters={self.n_clusters} must be between 1 and n_samples={n}")
        if augmented is not None:
            augmented = np.asarray(augmented, dtype=np.float32)
            if augmented.shape[1:] != X.shape or augmented.ndim != 3:
                raise NolabelValueError(f"augmented views must be (V, N, D) = (V, {n}, {X.shape[1]}), "
                                        f"got shape {augmented.shape}")
            if not np.isfinite(augmented).all():
                raise NolabelValueError("augmented views contain NaN or infinity")
        if self.n_clusters == 1:  # one cluster: nothing to learn
            self.heads_, self.best_head_, self.head_losses_, self.history_ = None, 0, [], []
            self.labels_ = np.zeros(n, dtype=np.int64)
            return self
        neighbors = mine_neighbors(X, config.n_neighbors)
        result = train_scan_features(X, neighbors, config, augmented=augmented, out_dir=None, show_progress=False)
        self.heads_ = result.heads.eval()
        self.best_head_ = int(result.best_head)
        self.head_losses_ = list(result.head_losses)
        self.history_ = list(result.history)
        self.labels_ = np.asarray(result.predictions, dtype=np.int64)  # head selection's (on `device`, in bf16 if set)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Cluster probabilities (N, n_clusters) float32 under the kept head (eval mode, on the CPU)."""
        check_is_fitted(self, "labels_")
        X = self._validate(X, reset=False)
        if self.heads_ is None:
            return np.ones((len(X), 1), dtype=np.float32)
        head = self.heads_.single(self.best_head_).eval()
        batch = max(int(self.batch_size), 512)  # as head selection predicts the training data
        out = np.empty((len(X), self.heads_.n_clusters), dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(X), batch):
                logits = head(torch.tensor(X[start:start + batch]))  # a copy: X may be read-only
                out[start:start + batch] = F.softmax(logits.float(), 1).numpy()
        return out

    def predict(self, X) -> np.ndarray:
        """The cluster (N,) int64 of every row of X under the kept head."""
        return self.predict_proba(X).argmax(1).astype(np.int64)

    def _validate(self, X, reset: bool) -> np.ndarray:
        """X as C-contiguous float32 (N, D), checked as scikit-learn does (finite, 2-d, N >= 2 to fit,
        D = n_features_in_ to predict)."""
        kwargs = dict(reset=reset, dtype=[np.float32, np.float64], ensure_min_samples=2 if reset else 1)
        try:
            from sklearn.utils.validation import validate_data  # scikit-learn >= 1.6
        except ImportError:
            X = self._validate_data(X, **kwargs)
        else:
            X = validate_data(self, X, **kwargs)
        return np.ascontiguousarray(X, dtype=np.float32)

    def _config(self, n: int) -> ScanConfig:
        """The ScanConfig of these parameters for n samples: the batch clipped to n, the neighbours to n - 1."""
        check_integers(self, ("n_clusters", "n_heads", "epochs", "batch_size", "hidden_dim", "n_neighbors"))
        seed = integer_seed(self.random_state)
        config = ScanConfig(n_clusters=max(self.n_clusters, 2),  # 1 is never trained; the rest is checked
                            n_heads=self.n_heads, entropy_weight=self.entropy_weight, epochs=self.epochs,
                            batch_size=min(self.batch_size, n), lr=self.lr, weight_decay=self.weight_decay,
                            hidden_dim=self.hidden_dim, n_neighbors=min(self.n_neighbors, n - 1),
                            random_state=seed, bf16=self.bf16, device=self.device)
        try:
            config.validate()
        except NolabelError as e:
            raise NolabelValueError(str(e)) from None
        return config
