"""TURTLE (Gadetsky, Jiang & Brbic, ICML 2024, "Let Go of Your Labels with Unsupervised Transfer"),
re-implemented from the paper: the labelling of a dataset whose linear classifiers, trained in each of
several frozen feature spaces, generalise best.

Spaces i = 1..M hold features Z_i (N, D_i). Each is centred and scaled to unit variance per coordinate
on average (one scalar per space, so its geometry is kept): how far a few inner steps get depends on
the features' scale, and the paper's spaces (CLIP, DINOv2) have coordinates of about that size. A
task encoder - one weight-normalised linear map W_i (D_i -> K) per space, which the paper finds crucial
- labels an image with the mean of the spaces' softmaxes,

    tau(x) = 1/M sum_i tau_i(x),  tau_i(x) = softmax(W_i z_i(x))             (N, K), rows sum to 1.

Inner problem: per space a linear classifier w_i (D_i -> K) learns the current labelling with the
soft cross-entropy ``inner(w_i) = -mean_x sum_k tau_k(x) log softmax(w_i z_i(x))_k`` in `inner_steps`
Adam steps on the batch; by default from a fresh random start every outer step (the paper's "cold
start": the loss then measures how fast a labelling is learnt, not whether it can be fitted at all -
in a wide space almost any balanced labelling can be). Outer problem: the task encoder lowers those
classifiers' loss on its labelling while keeping each space's mean labelling spread over the K
clusters,

    outer(W) = sum_i inner(w_i) - gamma * sum_i H(mean_x tau_i(x)),    H(p) = -sum_k p_k log p_k.

The outer gradient goes around the inner loop (the paper's efficient first-order variant: the
adapted classifiers are constants of the outer step, so the gradient flows through the labelling
only). Each outer step draws a batch at random, as the paper does. `n_restarts` independent runs are
made; the one kept is chosen without labels, by the lowest outer loss over all images
(`selection="loss"`) or by the highest generalization score of `nolabel.select` averaged over the
spaces (`selection="generalization"`). The kept task encoder is saved as plain linear maps on the
spaces' features as given (the scaling and the weight normalisation folded into their weights).

- `turtle_loss`, `inner_loss`, `labelling`: the objective on a batch;
- `train_turtle`: every restart (resumable via `nolabel.training.TrainingState`), the kept one's
  task encoder and its labelling;
- `TURTLE`: a scikit-learn-like clusterer, ``TURTLE(n_clusters=10).fit_predict([Z_1, Z_2])``;
- `run_turtle`: the stage from feature stores (one per space), writing the clustering artifact;
  `run_turtle_selflabel`: self-labeling of its task encoder, as after SCAN; `predict_turtle`:
  new images' cluster probabilities.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted

from .. import distributed, record
from ..config import EvaluateConfig, SelfLabelConfig, TurtleConfig
from ..errors import NolabelError, NolabelValueError
from ._params import check_integers, integer_seed
from ..training import TrainingState, load_result, progress, seeded, training_inputs

_DEFAULTS = TurtleConfig()
PREDICT_BATCH = 65_536  # rows per forward pass when whole datasets are labelled
STATES_PER_RESTART = 20  # a restart saves its state (and a history entry) this many times
TURTLE_VERSION = 2  # turtle.pt's layout: 2 = maps on the features as given (1 read L2-normalised rows)


# --------------------------------------------------------------------------- the objective

class TurtleLoss(NamedTuple):
    total: torch.Tensor  # fit - gamma * entropy: what the task encoder minimises
    fit: torch.Tensor  # sum over spaces of the classifiers' soft cross-entropy on the labelling
    entropy: torch.Tensor  # sum over spaces of H(that space's mean labelling), natural log; M log K at most


class SpaceLinears(nn.Module):
    """One linear map per feature space, [(B, D_i)] -> [(B, K)] logits: the task encoder, or the
    spaces' linear classifiers."""

    def __init__(self, dims: Sequence[int], n_clusters: int):
        super().__init__()
        self.dims, self.n_clusters = [int(d) for d in dims], int(n_clusters)
        self.maps = nn.ModuleList(nn.Linear(d, self.n_clusters) for d in self.dims)

    def forward(self, spaces: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # the (K, B) product viewed as (B, K): it costs what F.linear does, and the softmaxes below then
        # run over contiguous memory, ~2x faster than over F.linear's (B, K) (benchmarks/turtle_speed.py)
        return [torch.addmm(linear.bias[:, None], linear.weight, z.t()).t() for linear, z in zip(self.maps, spaces)]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """torch's default initialisation of a linear layer, U(-1/sqrt(D), 1/sqrt(D)) for weights and
        biases, drawn from `generator` (a CPU one: the same draws on every device)."""
        for linear in self.maps:
            bound = linear.in_features ** -0.5
            for parameter in (linear.weight, linear.bias):
                parameter.copy_(torch.empty(parameter.shape).uniform_(-bound, bound, generator=generator))

    def weight_normalise(self) -> "SpaceLinears":
        """Train each map as W = g v / ||v|| (per output row), the paper's task encoder."""
        for linear in self.maps:
            nn.utils.parametrizations.weight_norm(linear)
        return self

    @torch.no_grad()
    def fold(self, shifts: Sequence[np.ndarray], scales: Sequence[float]) -> "SpaceLinears":
        """Plain maps on the unscaled features: W (z - shift) / scale + b = (W / scale) z + b - W shift / scale;
        any weight normalisation is baked into the weights first."""
        for linear, shift, scale in zip(self.maps, shifts, scales):
            if nn.utils.parametrize.is_parametrized(linear):
                nn.utils.parametrize.remove_parametrizations(linear, "weight")
            weight = linear.weight / float(scale)
            linear.bias -= weight @ torch.as_tensor(shift, dtype=weight.dtype, device=weight.device)
            linear.weight.copy_(weight)
        return self


def _softmax(logits: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(log-)softmax over the K columns of (B, K) logits, computed on the transposed view: torch's CPU
    kernel is ~15x slower over a last dimension as short as K = 10 than over the first one
    (benchmarks/turtle_speed.py)."""
    return (F.log_softmax if log else F.softmax)(logits.float().t(), dim=0).t()


def space_labellings(task_logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """tau_i: each space's softmax of its task logits, [(B, K)]."""
    return [_softmax(logits) for logits in task_logits]


def labelling(task_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """tau: the mean over spaces of softmax(task logits), (B, K)."""
    return torch.stack(space_labellings(task_logits)).mean(0)


def inner_loss(classifier_logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Sum over spaces of the soft cross-entropy -mean_x sum_k targets_k log softmax(logits)_k."""
    return sum(-(targets * _softmax(logits, log=True)).sum(1).mean() for logits in classifier_logits)


@torch.no_grad()
def set_inner_gradients(classifiers: SpaceLinears, spaces: Sequence[torch.Tensor], targets: torch.Tensor) -> None:
    """Set each classifier's .grad to that of `inner_loss(classifiers(spaces), targets)`, written out:
    for the soft cross-entropy d loss / d logits = (softmax(logits) * sum_k targets_k - targets) / B,
    then the linear map's chain rule. Autograd records and replays a graph for the same (log-softmax,
    product, two reductions, and their backward) in each of the inner steps: the written-out gradient
    takes ~1.4x less time per inner step here, and TURTLE makes ~1.2x more steps/s
    (benchmarks/turtle_speed.py). For plain (not weight-normalised) maps: the inner classifiers."""
    targets_kb = targets.t()  # (K, B)
    row_sums = targets_kb.sum(0)
    for linear, z in zip(classifiers.maps, spaces):
        logits_kb = torch.addmm(linear.bias[:, None], linear.weight, z.t())
        dlogits = torch.softmax(logits_kb.float(), dim=0).mul_(row_sums).sub_(targets_kb).div_(len(z))
        linear.weight.grad = dlogits @ z
        linear.bias.grad = dlogits.sum(1)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum()


def turtle_loss(task_logits: Sequence[torch.Tensor], classifier_logits: Sequence[torch.Tensor],
                gamma: float) -> TurtleLoss:
    """The outer objective of a batch: the classifiers' loss on the task encoder's labelling minus
    gamma times the entropies of each space's mean labelling over the batch. Gradients reach whatever
    produced the logits; the training passes the classifiers' logits detached (first-order update)."""
    per_space = space_labellings(task_logits)
    fit = inner_loss(classifier_logits, torch.stack(per_space).mean(0))
    entropy = sum(_entropy(p.mean(0)) for p in per_space)
    return TurtleLoss(fit - gamma * entropy, fit, entropy)


class TurtleHead(nn.Module):
    """The task encoder as one network on the spaces' features concatenated, (B, sum D_i) -> (B, K)
    logits log tau(x): its softmax is tau. What self-labeling trains, and what predicts."""

    def __init__(self, task: SpaceLinears):
        super().__init__()
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spaces = torch.split(x, self.task.dims, dim=1)
        return torch.log(labelling(self.task(spaces)).clamp_min(1e-12))


# --------------------------------------------------------------------------- training

@dataclass
class TurtleResult:
    """The kept restart: its task encoder (on the CPU, on the spaces as given) and labelling tau (N, K)
    float32 of the training images; every restart's whole-data loss terms (and generalization score
    when it chose)."""

    task: SpaceLinears
    probabilities: np.ndarray
    best_restart: int
    restarts: list[dict[str, float]]
    history: list[list[dict[str, float]]] = field(default_factory=list)  # per restart, per saved state
    seconds: float = 0.0
    checkpoint: Path | None = None

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1).astype(np.int64)


def prepare_spaces(spaces: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The spaces as C-contiguous float32 (N, D_i) arrays, checked: at least one, 2-d, finite, the same
    N rows."""
    if isinstance(spaces, np.ndarray) and spaces.ndim == 2:
        spaces = [spaces]
    if len(spaces) == 0:
        raise NolabelError("TURTLE needs at least one feature space")
    out = []
    for i, z in enumerate(spaces):
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] < 1:
            raise NolabelError(f"feature space {i}: expected an (N, D) array, got shape {z.shape}")
        if not np.isfinite(z).all():
            raise NolabelError(f"feature space {i}: contains NaN or infinity")
        out.append(np.ascontiguousarray(z))
    rows = {len(z) for z in out}
    if len(rows) != 1:
        raise NolabelError(f"the feature spaces hold different numbers of rows: {[len(z) for z in out]}")
    return out


def standardize(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(z - shift) / scale, shift (D,) the column means, scale the root of the mean column variance
    (1 for a constant space): unit variance per coordinate on average, the space's geometry kept."""
    shift = z.mean(0, dtype=np.float64)
    scale = float(np.sqrt(np.mean(z.var(0, dtype=np.float64)))) or 1.0
    return ((z - shift) / scale).astype(np.float32), shift, scale


def train_turtle(spaces: Sequence[np.ndarray], config: TurtleConfig | None = None,
                 out_dir: str | Path | None = None, show_progress: bool = True) -> TurtleResult:
    """TURTLE on frozen features: `spaces`, a list of M arrays (N, D_i) of the same N images. Runs
    `config.n_restarts` restarts and keeps the best by `config.selection`. With `out_dir`, each restart
    saves its state there `STATES_PER_RESTART` times (turtle_state_R.pt) and resumes from it; the kept
    task encoder is written to turtle.pt."""
    config = config or TurtleConfig()
    config.validate()
    spaces = prepare_spaces(spaces)
    n = len(spaces[0])
    if n < config.n_clusters:
        raise NolabelError(f"{n} images cannot fill {config.n_clusters} clusters")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = distributed.resolve_device(config.device)
    scaled = [standardize(z) for z in spaces]
    on_device = [torch.from_numpy(z).to(device) for z, _, _ in scaled]
    runs = [_train_restart(spaces, on_device, config, r, out, show_progress) for r in range(config.n_restarts)]
    restarts = [run[2] for run in runs]
    if config.selection == "generalization":
        from ..select import generalization

        for (_, probabilities, summary) in runs:
            summary["generalization"] = float(np.mean([generalization(z, probabilities.argmax(1)) for z in spaces]))
        best = int(np.argmax([s["generalization"] for s in restarts]))
    else:
        best = int(np.argmin([s["loss"] for s in restarts]))
    task, probabilities, _ = runs[best]
    task.fold([shift for _, shift, _ in scaled], [scale for _, _, scale in scaled])
    result = TurtleResult(task, probabilities, best, restarts, [s.pop("history") for s in restarts],
                          seconds=time.perf_counter() - started)
    if out is not None and distributed.is_main():
        result.checkpoint = save_turtle(out / "turtle.pt", result, config)
    return result


def _train_restart(spaces: list[np.ndarray], on_device: list[torch.Tensor], config: TurtleConfig, restart: int,
                   out: Path | None, show_progress: bool) -> tuple[SpaceLinears, np.ndarray, dict[str, Any]]:
    """One restart on the scaled spaces `on_device`: (task encoder on the CPU, still on the scaled spaces
    and weight-normalised; its labelling (N, K); its whole-data loss terms + history). `spaces`, the
    features as given, identify the data in the resume record."""
    device = on_device[0].device
    n, dims, k = len(spaces[0]), [z.shape[1] for z in spaces], config.n_clusters
    seed = config.random_state * 1009 + restart  # restarts of one seed never repeat another seed's
    with seeded(seed, device):
        task, classifiers = SpaceLinears(dims, k).weight_normalise(), SpaceLinears(dims, k)
    task.to(device)
    classifiers.to(device)
    outer = torch.optim.Adam(task.parameters(), lr=config.outer_lr)
    inner = torch.optim.Adam(classifiers.parameters(), lr=config.inner_lr)
    generator = torch.Generator().manual_seed(seed)  # batches and the classifiers' cold starts
    modules = {"task": task, "classifiers": classifiers}
    state = None
    if out is not None:
        state = TrainingState(out / f"turtle_state_{restart}.pt", training_inputs(
            config, *spaces, modules=modules, restart=restart))
    saved = state.load() if state is not None else None
    first_step, history = 0, []
    if saved is not None:
        TrainingState.restore(saved, modules, outer, generator)
        inner.load_state_dict(saved["inner"])  # the classifiers' optimizer (warm start), beside the task encoder's
        first_step, history = int(saved["epoch"]), list(saved["history"])
    batch = min(config.batch_size, n)
    every = max(1, config.steps // STATES_PER_RESTART)
    sums, counted = np.zeros(3), 0
    steps = progress(range(first_step, config.steps), total=config.steps - first_step,
                     desc=f"turtle {restart + 1}/{config.n_restarts}", enabled=show_progress)
    for step in steps:
        rows = torch.randperm(n, generator=generator)[:batch].to(device)
        z = [space[rows] for space in on_device]
        task_logits = task(z)
        targets = labelling(task_logits).detach()
        if config.inner_start == "cold":
            classifiers.reset_parameters(generator)
            inner = torch.optim.Adam(classifiers.parameters(), lr=config.inner_lr)
        for _ in range(config.inner_steps):
            set_inner_gradients(classifiers, z, targets)
            inner.step()
        with torch.no_grad():
            adapted = classifiers(z)
        loss = turtle_loss(task_logits, adapted, config.gamma)
        outer.zero_grad(set_to_none=True)
        loss.total.backward()
        outer.step()
        sums += [loss.total.item(), loss.fit.item(), loss.entropy.item()]
        counted += 1
        if (step + 1) % every == 0 or step + 1 == config.steps:
            mean = sums / counted
            history.append({"step": step + 1, "loss": float(mean[0]), "fit": float(mean[1]),
                            "entropy": float(mean[2])})
            sums, counted = np.zeros(3), 0
            if state is not None:
                state.save(step + 1, modules, outer, generator, history, inner=inner.state_dict())
    probabilities, whole = _whole_data(task, classifiers, on_device, config.gamma)
    task.to("cpu")
    return task.eval(), probabilities, {**whole, "restart": restart, "seed": seed,
                                        "clusters_used": int(len(np.unique(probabilities.argmax(1)))),
                                        "history": history}


@torch.no_grad()
def _whole_data(task: SpaceLinears, classifiers: SpaceLinears, on_device: list[torch.Tensor],
                gamma: float) -> tuple[np.ndarray, dict[str, float]]:
    """The labelling of every image (N, K) and the outer loss terms over all of them at once, with the
    classifiers as the last outer step left them."""
    n = len(on_device[0])
    taus, space_sums, fit = [], [0.0] * len(on_device), 0.0
    for start in range(0, n, PREDICT_BATCH):
        z = [space[start:start + PREDICT_BATCH] for space in on_device]
        per_space = space_labellings(task(z))
        tau = torch.stack(per_space).mean(0)
        fit += float(inner_loss(classifiers(z), tau)) * len(tau)
        space_sums = [total + p.sum(0) for total, p in zip(space_sums, per_space)]
        taus.append(tau.cpu())
    entropy = float(sum(_entropy(total / n) for total in space_sums))
    fit /= n
    probabilities = torch.cat(taus).numpy().astype(np.float32)
    return probabilities, {"loss": fit - gamma * entropy, "fit": fit, "entropy": entropy}


def save_turtle(path: Path, result: TurtleResult, config: TurtleConfig) -> Path:
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"format": "nolabel-turtle", "version": TURTLE_VERSION, "dims": result.task.dims,
                    "n_clusters": result.task.n_clusters,
                    "task": result.task.state_dict(), "best_restart": result.best_restart,
                    "restarts": result.restarts, "config": asdict(config)}, tmp)
    return path


def load_turtle(path: str | Path) -> tuple[SpaceLinears, dict[str, Any]]:
    """Read turtle.pt: (the kept task encoder, the whole saved dict)."""
    saved = load_result(path, "turtle", "turtle")
    if saved.get("version", 1) != TURTLE_VERSION:
        raise NolabelError(f"{path}: written by an earlier nolabel whose task encoder read L2-normalised rows; "
                           "train it again (nolabel turtle --force, or rerun the run)")
    task = SpaceLinears(saved["dims"], saved["n_clusters"])
    task.load_state_dict(saved["task"])
    return task.eval(), saved


@torch.no_grad()
def predict_proba_spaces(task: SpaceLinears, spaces: Sequence[np.ndarray], head: nn.Module | None = None
                         ) -> np.ndarray:
    """tau (N, K) float32 of new images' features, one (N, D_i) array per space,
    on the CPU; `head` (a self-labeled `TurtleHead`) instead of the task encoder when given."""
    spaces = prepare_spaces(spaces)
    if [z.shape[1] for z in spaces] != task.dims:
        raise NolabelError(f"TURTLE was trained on spaces of widths {task.dims}, got {[z.shape[1] for z in spaces]}")
    model = (head or TurtleHead(task)).eval()
    out = np.empty((len(spaces[0]), task.n_clusters), dtype=np.float32)
    for start in range(0, len(out), PREDICT_BATCH):
        x = torch.from_numpy(np.concatenate([z[start:start + PREDICT_BATCH] for z in spaces], axis=1))
        out[start:start + PREDICT_BATCH] = F.softmax(model(x), dim=1).numpy()
    return out


# --------------------------------------------------------------------------- estimator

class TURTLE(ClusterMixin, BaseEstimator):
    """TURTLE on frozen features of several spaces (Gadetsky et al. 2024) as a scikit-learn clusterer.

    X is a list of M arrays (N, D_i), the same N images in every space (a single (N, D) array is one
    space). Parameters are `TurtleConfig`'s, with its defaults;
    `random_state` an int (None or a RandomState draw one); `device` "auto" trains on a GPU when one
    is visible. The batch is clipped to N.

    Attributes after `fit`: `task_` (the kept task encoder, `SpaceLinears`, CPU), `labels_` (N,)
    int64, `probabilities_` (N, K) tau, `best_restart_`, `restarts_` (each restart's whole-data loss
    terms), `history_`, `n_features_in_` (list of the D_i). `predict_proba(X)` equals
    `probabilities_` on the training data (to float rounding; on a GPU up to near-ties).
    """

    def __init__(self, n_clusters: int = _DEFAULTS.n_clusters, gamma: float = _DEFAULTS.gamma,
                 inner_steps: int = _DEFAULTS.inner_steps, inner_lr: float = _DEFAULTS.inner_lr,
                 outer_lr: float = _DEFAULTS.outer_lr, steps: int = _DEFAULTS.steps,
                 batch_size: int = _DEFAULTS.batch_size, inner_start: str = _DEFAULTS.inner_start,
                 n_restarts: int = _DEFAULTS.n_restarts, selection: str = _DEFAULTS.selection,
                 random_state=_DEFAULTS.random_state,
                 device: str = _DEFAULTS.device):
        self.n_clusters = n_clusters
        self.gamma = gamma
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.outer_lr = outer_lr
        self.steps = steps
        self.batch_size = batch_size
        self.inner_start = inner_start
        self.n_restarts = n_restarts
        self.selection = selection
        self.random_state = random_state
        self.device = device

    def fit(self, X, y=None) -> "TURTLE":
        """Train on the spaces X (list of (N, D_i)); `y` is ignored."""
        config = self._config()
        try:
            result = train_turtle(X, config, out_dir=None, show_progress=False)
        except NolabelError as e:
            raise NolabelValueError(str(e)) from None
        self.task_, self.best_restart_, self.restarts_ = result.task, result.best_restart, result.restarts
        self.history_, self.probabilities_ = result.history, result.probabilities
        self.labels_ = result.predictions
        self.n_features_in_ = list(result.task.dims)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """tau (N, n_clusters) float32 of the spaces X under the kept task encoder."""
        check_is_fitted(self, "labels_")
        try:
            return predict_proba_spaces(self.task_, X)
        except NolabelError as e:
            raise NolabelValueError(str(e)) from None

    def predict(self, X) -> np.ndarray:
        """The cluster (N,) int64 of every image: argmax of tau."""
        return self.predict_proba(X).argmax(1).astype(np.int64)

    def _config(self) -> TurtleConfig:
        check_integers(self, ("n_clusters", "inner_steps", "steps", "batch_size", "n_restarts"))
        seed = integer_seed(self.random_state)
        config = TurtleConfig(n_clusters=self.n_clusters, gamma=self.gamma, inner_steps=self.inner_steps,
                              inner_lr=self.inner_lr, outer_lr=self.outer_lr, steps=self.steps,
                              batch_size=self.batch_size, inner_start=self.inner_start,
                              n_restarts=self.n_restarts, selection=self.selection, random_state=seed,
                              device=self.device)
        try:
            config.validate()
        except NolabelError as e:
            raise NolabelValueError(str(e)) from None
        return config


# --------------------------------------------------------------------------- the stage from files

TRAINING_RECORD = "training.record.json"


def _pca_file(space: int) -> str:
    return f"pca_{space}.npz"


def store_parts(stores: Sequence[Any], split_levels: bool) -> list[list[int]]:
    """Per store, the widths of the spaces it gives TURTLE: with `split_levels`, one per part its
    model's feature concatenates (`nolabel.models.feature_parts`: a multi-level feature's levels, each
    normalised on its own when extracted); else, or for a feature of one piece, its whole width."""
    from ..models import feature_parts

    out = []
    for store in stores:
        parts = feature_parts(store.manifest.get("model", "")) if split_levels else None
        out.append(list(parts) if parts and sum(parts) == store.dim else [store.dim])
    return out


def _load_spaces(stores: Sequence[Any], folder: Path, parts: Sequence[Sequence[int]],
                 fit_pca: int | None | bool = False) -> list[np.ndarray]:
    """The spaces TURTLE reads, as float32: each store cut into its `parts` (column blocks), each through
    its space's PCA in `folder` (pca_I.npz, I the space's index) when it has one. `fit_pca` (training):
    the PCAs are made anew - to that many dimensions for each space wider than it, none for the others
    (None: none at all)."""
    from .pca import PCA

    spaces = []
    for store, widths in zip(stores, parts):
        features = np.asarray(store.features, dtype=np.float32)
        if sum(widths) != features.shape[1]:
            raise NolabelError(f"TURTLE read {sum(widths)}-d features in this space, got {features.shape[1]}-d "
                               f"ones{f' ({store.path})' if hasattr(store, 'path') else ''}")
        for start, width in zip(np.cumsum([0, *widths[:-1]]), widths):
            z = np.ascontiguousarray(features[:, start:start + width])
            path = folder / _pca_file(len(spaces))
            if fit_pca is not False:
                path.unlink(missing_ok=True)  # from an earlier training of this folder
            if fit_pca is not False and fit_pca is not None and width > fit_pca:
                pca = PCA(min(fit_pca, len(z))).fit(z)
                if distributed.is_main():
                    pca.save(path)
                z = pca.transform(z)
            elif fit_pca is False and path.is_file():
                z = PCA.load(path).transform(z)
            spaces.append(z)
    return spaces


def _open_stores(folders: Sequence[str | Path]) -> list[Any]:
    from ..store import FeatureStore

    stores = [FeatureStore.open(f) for f in folders]
    if len({s.n for s in stores}) != 1:
        raise NolabelError(f"the feature folders of one image set hold different numbers of images: "
                           f"{[f'{s.path}: {s.n}' for s in stores]}")
    return stores


def _eval_sets(eval_features: Sequence[Sequence[str | Path]], n_spaces: int) -> list[dict[str, Any]]:
    """Each eval set: one feature folder per space, in the train spaces' order; named after its
    first folder."""
    from ..store import unique_names

    evals = []
    for folders in eval_features:
        if len(folders) != n_spaces:
            raise NolabelError(f"an eval set needs one feature folder per backbone ({n_spaces}), got {list(folders)}")
        stores = _open_stores(folders)
        evals.append({"stores": stores, "inputs": [s.fingerprint for s in stores]})
    names = unique_names(["train", *[e["stores"][0].path.name or "eval" for e in evals]])
    for entry, name in zip(evals, names[1:]):
        entry["name"] = name
    return evals


def _read_spaces(turtle_dir: Path, features: Sequence[Any], task: SpaceLinears) -> list[np.ndarray]:
    """The spaces a finished TURTLE stage reads from `features` - one FeatureStore, its folder or an
    (N, D) array per backbone, in its order: cut into the parts its turtle.json records, each through
    its PCA."""
    from ..io import read_json
    from ..store import FeatureStore

    summary = turtle_dir / "turtle.json"  # the stage's: how it cut the backbones' features into spaces
    parts = (read_json(summary).get("parts") if summary.is_file() else None) or [[d] for d in task.dims]
    if len(features) != len(parts):
        raise NolabelError(f"TURTLE read the features of {len(parts)} backbone(s); got features of {len(features)}")

    class _Array:  # an array in hand, read like a store
        def __init__(self, array):
            self.features = array

    stores = [_Array(f) if isinstance(f, np.ndarray) else f if isinstance(f, FeatureStore) else FeatureStore.open(f)
              for f in features]
    return _load_spaces(stores, turtle_dir, parts)


def predict_turtle(turtle_dir: str | Path, features: Sequence[Any], selflabel_dir: str | Path | None = None
                   ) -> np.ndarray:
    """Cluster probabilities (N, K) of new images under a finished TURTLE stage (or its self-labeled
    version, `selflabel_dir`): `features`, one FeatureStore, its folder or an (N, D_i) array per
    backbone TURTLE read, in its order; each space's PCA, if any, is applied."""
    turtle_dir = Path(turtle_dir)
    task, _ = load_turtle(turtle_dir / "turtle.pt")
    spaces = _read_spaces(turtle_dir, features, task)
    head = None
    if selflabel_dir is not None and (Path(selflabel_dir) / "selflabel.pt").is_file():
        from .scan.heads import ListHead

        head = TurtleHead(task)
        modules = load_result(Path(selflabel_dir) / "selflabel.pt", "selflabel", "selflabel")["modules"]
        if "ema" in modules:  # the averaged weights are the ones self-labeling predicted with
            ListHead(head).load_state_dict(modules["ema"])
        else:
            head.load_state_dict(modules["head"])
    return predict_proba_spaces(task, spaces, head)


def turtle_space(turtle_dir: str | Path, features: Sequence[Any]) -> np.ndarray:
    """(N, sum of the spaces' widths) float32: images in the spaces a finished TURTLE stage clustered
    them in (`features` as for `predict_turtle`) - each space (a backbone's feature or one level of it,
    through its PCA) with its rows L2-normalised, side by side, divided by sqrt(number of spaces). Rows
    have unit norm, and the dot product of two is the mean over the spaces of their cosine similarity
    in each: every space counts equally, as in TURTLE's objective. Where "near" means something for a
    TURTLE clustering: the report's map and `nolabel.similar`."""
    turtle_dir = Path(turtle_dir)
    task, _ = load_turtle(turtle_dir / "turtle.pt")
    spaces = _read_spaces(turtle_dir, features, task)
    unit = [z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12) for z in spaces]
    return np.ascontiguousarray(np.concatenate(unit, axis=1) / np.sqrt(len(unit)), dtype=np.float32)


def run_turtle(out_dir: str | Path, features: Sequence[str | Path], *, pca_components: int | None = None,
               split_levels: bool = False, config: TurtleConfig | None = None,
               eval_features: Sequence[Sequence[str | Path]] = (), evaluate: EvaluateConfig = EvaluateConfig(),
               force: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """The TURTLE stage from files: `features`, one FeatureStore folder per backbone (the same images
    in the same order), each one space or, with `split_levels`, one space per level of a multi-level
    feature (`store_parts`); each space wider than `pca_components` projected to that many PCA
    dimensions (saved as pca_I.npz); trains and writes the TURTLE clustering into `out_dir`
    (`nolabel.clustering`) beside turtle.pt, probabilities.npy (N, K), predictions.npy and turtle.json
    (restarts, the kept one, timings, how the features were cut into spaces). `eval_features`: per
    eval set, one folder per backbone, assigned and scored.

    A clustering finished from the same inputs is returned as it is (metrics.json's content); an
    interrupted one resumes; one of other inputs is replaced only with `force`. Training keeps a
    record of its own, so another eval set reuses it."""
    from ..io import read_json, save_npy, write_json

    out = Path(out_dir)
    config = config or TurtleConfig()
    config.validate()
    distributed.resolve_device(config.device)  # a missing GPU fails here, before any file is written
    if pca_components is not None and pca_components < 1:
        raise NolabelError(f"PCA before TURTLE takes a number of dimensions >= 1, got {pca_components}")
    stores = _open_stores(features)
    evals = _eval_sets(eval_features, len(stores))
    parts = store_parts(stores, split_levels)
    training = {"spaces": [s.fingerprint for s in stores], "parts": parts, "pca": pca_components,
                "config": record.without(asdict(config), "device")}
    stage_inputs = {"training": training, "evals": [e["inputs"] for e in evals], "evaluate": asdict(evaluate)}
    if record.begin(out, "turtle", stage_inputs, force=force, what="a TURTLE clustering") is record.DONE:
        return read_json(out / "metrics.json")
    if not record.is_done(out, training, name=TRAINING_RECORD):
        status = record.begin(out, "turtle-training", training, force=True, name=TRAINING_RECORD)
        if status is record.START:  # training states here belong to other inputs
            for stale in out.glob("turtle_state_*.pt"):
                stale.unlink()
        started = time.perf_counter()
        spaces = _load_spaces(stores, out, parts, fit_pca=pca_components)
        prepared = time.perf_counter() - started
        result = train_turtle(spaces, config, out, show_progress)
        if distributed.is_main():
            save_npy(out / "probabilities.npy", result.probabilities)
            save_npy(out / "predictions.npy", result.predictions)
            write_json(out / "turtle.json", {"n": len(result.probabilities), "dims": result.task.dims,
                                             "parts": parts, "pca_components": pca_components,
                                             "best_restart": result.best_restart,
                                             "restarts": result.restarts, "history": result.history,
                                             "seconds": {"pca": prepared, "train": result.seconds},
                                             "config": asdict(config)})
        record.finish(out, "turtle-training", training, name=TRAINING_RECORD)
    summary = read_json(out / "turtle.json")
    scored = _write_turtle_clustering(out, "TURTLE", stores, np.load(out / "probabilities.npy"), evals, out, None,
                                      evaluate, stage_inputs, {"best_restart": summary["best_restart"],
                                                               "restarts": summary["restarts"]})
    record.finish(out, "turtle", stage_inputs)
    return scored


def _write_turtle_clustering(out: Path, method: str, stores: list[Any], probabilities: np.ndarray,
                             evals: list[dict[str, Any]], turtle_dir: Path, selflabel_dir: Path | None,
                             evaluate: EvaluateConfig, settings: dict[str, Any], fitted: dict[str, Any]
                             ) -> dict[str, Any]:
    """The clustering of a TURTLE task encoder (or its self-labeled head): the train images from the
    training's labelling, each eval set predicted. A source's images and labels are read from its
    first store; the assigner records all of each source's stores."""
    import os

    from ..clustering import Source, write_clustering
    from ..io import save_npy

    sources, clusters, confidence = [Source.of_store("train", stores[0])], [probabilities.argmax(1)], \
        [probabilities.max(1)]
    for entry in evals:
        p = predict_turtle(turtle_dir, [s.path for s in entry["stores"]], selflabel_dir)
        if distributed.is_main():
            save_npy(out / f"probabilities_{entry['name']}.npy", p)
        sources.append(Source.of_store(entry["name"], entry["stores"][0]))
        clusters.append(p.argmax(1))
        confidence.append(p.max(1))
    def relative(stores_of_source: list[Any]) -> list[str]:
        return [os.path.relpath(s.path.resolve(), out.resolve()) for s in stores_of_source]

    # each source's stores, one per backbone: where its images lie in TURTLE's spaces (`turtle_space`)
    assigner = {"kind": "turtle", "turtle": os.path.relpath(turtle_dir.resolve(), out.resolve()),
                "selflabel": "." if selflabel_dir is not None else None, "spaces": relative(stores),
                "eval_spaces": {entry["name"]: relative(entry["stores"]) for entry in evals}}
    return write_clustering(out, method=method, sources=sources, clusters=clusters, confidence=confidence,
                            n_clusters=probabilities.shape[1], assigner=assigner, evaluate=evaluate,
                            settings=settings, fitted=fitted)


def run_turtle_selflabel(turtle_dir: str | Path, out_dir: str | Path, features: Sequence[str | Path], *,
                         config: SelfLabelConfig | None = None, eval_features: Sequence[Sequence[str | Path]] = (),
                         evaluate: EvaluateConfig = EvaluateConfig(), force: bool = False,
                         show_progress: bool = True) -> dict[str, Any]:
    """Self-labeling after TURTLE, as after SCAN (`nolabel.cluster.selflabel`): the task encoder, as
    one network on the spaces' features concatenated (`TurtleHead`), is trained on its own confident
    labels (clean features: there are no augmented views of several spaces). Writes the clustering
    "TURTLE + self-labeling" into `out_dir` beside selflabel.pt, probabilities.npy and selflabel.json.
    Its inputs include TURTLE's result by hash; the same inputs return the finished clustering."""
    from ..io import read_json, save_npy, sha256_file, write_json
    from .selflabel import confident_fraction, train_selflabel_features

    turtle_dir, out = Path(turtle_dir), Path(out_dir)
    config = config or SelfLabelConfig()
    config.validate()
    distributed.resolve_device(config.device)
    task, _ = load_turtle(turtle_dir / "turtle.pt")
    stores = _open_stores(features)
    evals = _eval_sets(eval_features, len(stores))
    training = {"turtle": {name: sha256_file(turtle_dir / name) for name in ("turtle.pt", "probabilities.npy")},
                "spaces": [s.fingerprint for s in stores], "config": record.without(asdict(config), "device")}
    stage_inputs = {"training": training, "evals": [e["inputs"] for e in evals], "evaluate": asdict(evaluate)}
    if record.begin(out, "turtle-selflabel", stage_inputs, force=force,
                    what="a TURTLE self-labeling clustering") is record.DONE:
        return read_json(out / "metrics.json")
    if not record.is_done(out, training, name=TRAINING_RECORD):
        if record.begin(out, "turtle-selflabel-training", training, force=True, name=TRAINING_RECORD) is record.START:
            (out / "selflabel_state.pt").unlink(missing_ok=True)
        parts = read_json(turtle_dir / "turtle.json")["parts"]
        spaces = prepare_spaces(_load_spaces(stores, turtle_dir, parts))
        head = TurtleHead(task)
        result = train_selflabel_features(np.concatenate(spaces, axis=1), head,
                                          np.load(turtle_dir / "probabilities.npy"), config, None, out, show_progress)
        if distributed.is_main():
            save_npy(out / "probabilities.npy", np.asarray(result.probabilities, dtype=np.float32))
            save_npy(out / "predictions.npy", result.predictions.astype(np.int64))
            write_json(out / "selflabel.json", {
                "skipped": result.skipped, "message": result.message,
                "confident_fraction_start": result.confident_fraction,
                "confident_fraction_end": confident_fraction(result.probabilities, config.threshold),
                "seconds": result.seconds, "history": result.history, "config": asdict(config)})
        record.finish(out, "turtle-selflabel-training", training, name=TRAINING_RECORD)
    summary = read_json(out / "selflabel.json")
    skipped = summary["skipped"]  # a skipped self-labeling kept TURTLE's labelling: predict with its encoder
    scored = _write_turtle_clustering(out, "TURTLE + self-labeling", stores, np.load(out / "probabilities.npy"),
                                      evals, turtle_dir, None if skipped else out, evaluate, stage_inputs,
                                      {key: summary[key] for key in ("skipped", "confident_fraction_start",
                                                                     "confident_fraction_end")})
    record.finish(out, "turtle-selflabel", stage_inputs)
    return scored
