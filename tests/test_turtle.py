"""TURTLE: the objective on a hand-computed case, no collapse, two spaces that only together determine
the partition, resume, the estimator, the stage from files with self-labeling, and the command."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nolabel.cluster.turtle import TURTLE, SpaceLinears, inner_loss, labelling, run_turtle, run_turtle_selflabel, \
    set_inner_gradients, train_turtle, turtle_loss
from nolabel.config import SelfLabelConfig, TurtleConfig
from nolabel.errors import NolabelError, NolabelValueError
from nolabel.metrics import evaluate

LN3 = math.log(3.0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """TURTLE's matrices here are tiny: on a loaded 2-vCPU box a second torch thread only waits on the
    other (the two-spaces test took 310 s with two threads, 5 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_inner_and_outer_losses_hand_computed():
    # Two images, two spaces, K = 2. Task encoder softmaxes: space A (1/4, 3/4) and (3/4, 1/4), space B
    # (1/2, 1/2) and (3/4, 1/4), so tau = (3/8, 5/8) and (3/4, 1/4).
    task = [torch.tensor([[0.0, LN3], [LN3, 0.0]]), torch.tensor([[0.0, 0.0], [LN3, 0.0]])]
    tau = labelling(task)
    np.testing.assert_allclose(tau.numpy(), [[3 / 8, 5 / 8], [3 / 4, 1 / 4]], atol=1e-7)
    # Classifier softmaxes: space A (1/2, 1/2) and (3/4, 1/4); space B (3/4, 1/4) and (1/2, 1/2).
    classifiers = [torch.tensor([[0.0, 0.0], [LN3, 0.0]]), torch.tensor([[LN3, 0.0], [0.0, 0.0]])]
    ln = math.log
    inner_a = (ln(2) - (3 / 4 * ln(3 / 4) + 1 / 4 * ln(1 / 4))) / 2
    inner_b = (-(3 / 8 * ln(3 / 4) + 5 / 8 * ln(1 / 4)) + ln(2)) / 2
    assert float(inner_loss(classifiers, tau)) == pytest.approx(inner_a + inner_b, abs=1e-6)
    assert float(inner_loss(classifiers[:1], tau)) == pytest.approx(inner_a, abs=1e-6)
    # each space's mean labelling: A (1/2, 1/2), B (5/8, 3/8); outer = inner - gamma * their entropies
    entropy = ln(2) - (5 / 8 * ln(5 / 8) + 3 / 8 * ln(3 / 8))
    loss = turtle_loss(task, classifiers, gamma=2.0)
    assert float(loss.entropy) == pytest.approx(entropy, abs=1e-6)
    assert float(loss.fit) == pytest.approx(inner_a + inner_b, abs=1e-6)
    assert float(loss.total) == pytest.approx(inner_a + inner_b - 2.0 * entropy, abs=1e-6)


def test_outer_gradient_reaches_the_task_encoder_only():
    task_logits = torch.zeros(3, 2, requires_grad=True)
    classifier_logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], requires_grad=True)
    turtle_loss([task_logits], [classifier_logits.detach()], gamma=0.0).total.backward()
    # lowering the fit moves each image's labelling towards the class its classifier predicts
    grad = task_logits.grad.numpy()
    assert (grad[[0, 2], 0] < 0).all() and grad[1, 1] < 0
    assert classifier_logits.grad is None


@pytest.mark.parametrize("normalised_targets", [True, False])
def test_written_out_inner_gradients_equal_autograds(normalised_targets):
    generator = torch.Generator().manual_seed(0)
    spaces = [torch.randn(50, d, generator=generator) * 3 for d in (4, 7)]
    targets = torch.rand(50, 3, generator=generator)
    if normalised_targets:  # a labelling, as TURTLE's inner steps see: rows summing to 1
        targets /= targets.sum(1, keepdim=True)
    written, reference = SpaceLinears([4, 7], 3), SpaceLinears([4, 7], 3)
    reference.load_state_dict(written.state_dict())
    set_inner_gradients(written, spaces, targets)
    inner_loss(reference(spaces), targets).backward()  # autograd, the independent reference
    for (name, ours), theirs in zip(written.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-5, msg=name)
        assert ours.grad.abs().max() > 1e-3  # a real gradient, not a pair of zeros


def _blobs(n_per: int, k: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    centres = rng.normal(0, 1, (k, dim)) * 5
    return (centres[y] + rng.normal(0, 0.5, (len(y), dim))).astype(np.float32), y


FAST = dict(steps=60, outer_lr=1e-2, inner_lr=1e-2, n_restarts=1, device="cpu")


def test_no_collapse_balanced_separable_data_gives_balanced_clusters():
    x, y = _blobs(100, 4, 8)
    model = TURTLE(n_clusters=4, **FAST).fit(x)
    assert evaluate(y, model.labels_)["acc"] == 1.0
    np.testing.assert_array_equal(np.bincount(model.labels_, minlength=4), [100, 100, 100, 100])
    # without the entropy term nothing holds the clusters apart: fewer are used
    collapsed = TURTLE(n_clusters=4, gamma=0.0, **FAST).fit(x)
    assert np.bincount(collapsed.labels_, minlength=4).max() > 100


def test_two_spaces_recover_a_partition_neither_space_alone_determines():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 75)

    def space(groups: list[int]) -> np.ndarray:  # images of classes in the same group look alike here
        centres = rng.normal(0, 1, (max(groups) + 1, 6)) * 4
        return (centres[np.asarray(groups)[y]] + rng.normal(0, 0.5, (len(y), 6))).astype(np.float32)

    a, b = space([0, 0, 1, 2]), space([0, 1, 2, 2])  # A confuses classes 0/1, B confuses 2/3
    config = dict(n_clusters=4, steps=150, outer_lr=1e-2, inner_lr=1e-2, n_restarts=1, device="cpu")
    alone = [evaluate(y, TURTLE(**config).fit_predict([z]))["acc"] for z in (a, b)]
    both = TURTLE(**config).fit([a, b])
    assert max(alone) < 0.85
    assert evaluate(y, both.labels_)["acc"] == 1.0
    np.testing.assert_array_equal(both.predict([a, b]), both.labels_)


@pytest.mark.parametrize("inner_start", ["cold", "warm"])
def test_resume_continues_exactly(tmp_path, monkeypatch, inner_start):
    from test_scan import interrupt_after

    x, _ = _blobs(30, 3, 5)
    spaces = [x, x[:, ::-1] ** 2]
    config = TurtleConfig(n_clusters=3, steps=4, batch_size=40, n_restarts=2, inner_steps=3, outer_lr=1e-2,
                          inner_start=inner_start, device="cpu")
    full = train_turtle(spaces, config, out_dir=tmp_path / "full", show_progress=False)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)  # in the first restart
        with pytest.raises(KeyboardInterrupt):
            train_turtle(spaces, config, out_dir=tmp_path / "resumed", show_progress=False)
    # the state's "epoch" counts outer steps here
    assert torch.load(tmp_path / "resumed" / "turtle_state_0.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "resumed" / "turtle_state_1.pt").exists()
    resumed = train_turtle(spaces, config, out_dir=tmp_path / "resumed", show_progress=False)
    assert resumed.history == full.history and resumed.restarts == full.restarts
    np.testing.assert_allclose(resumed.probabilities, full.probabilities, atol=1e-6)
    with pytest.raises(NolabelError, match="other settings"):  # a state of other settings is never resumed
        train_turtle(spaces, TurtleConfig(**{**config.__dict__, "gamma": 3.0}), out_dir=tmp_path / "resumed",
                     show_progress=False)


def test_restarts_are_chosen_without_labels():
    x, y = _blobs(40, 3, 6)
    for selection in ("loss", "generalization"):
        model = TURTLE(n_clusters=3, steps=20, outer_lr=1e-2, inner_lr=1e-2, n_restarts=3, selection=selection,
                       device="cpu").fit(x)
        key = "loss" if selection == "loss" else "generalization"
        values = [r[key] for r in model.restarts_]
        assert values[model.best_restart_] == (min(values) if selection == "loss" else max(values))
        assert len(model.history_) == 3 and len(model.history_[0]) == 20


def test_estimator_checks_its_input():
    x, _ = _blobs(10, 2, 3)
    with pytest.raises(NolabelValueError, match="different numbers of rows"):
        TURTLE(n_clusters=2, **FAST).fit([x, x[:5]])
    with pytest.raises(NolabelValueError, match="n_clusters"):
        TURTLE(n_clusters=1, **FAST).fit(x)
    with pytest.raises(NolabelValueError, match="NaN"):
        TURTLE(n_clusters=2, **FAST).fit([np.full_like(x, np.nan)])
    model = TURTLE(n_clusters=2, **{**FAST, "steps": 2}).fit([x, x])
    with pytest.raises(NolabelValueError, match="widths"):
        model.predict([x, x[:, :2]])
    proba = model.predict_proba([x, x])
    assert proba.shape == (20, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(proba, model.probabilities_, atol=1e-5)


def _stores(root, x, y, name):
    from nolabel.store import write_store

    return write_store(root / name, x, y, [f"{name}/{i}" for i in range(len(x))],
                       {"dataset": "blobs", "model": name})


def test_stage_writes_the_clustering_assigns_eval_sets_resumes_and_self_labels(tmp_path):
    from nolabel.clustering import load_clustering

    x, y = _blobs(60, 3, 6)
    held, held_y = _blobs(10, 3, 6)  # the same centres (seed 0), other noise draws are not needed here
    a, b = _stores(tmp_path, x, y, "a"), _stores(tmp_path, x[:, ::-1].copy(), y, "b")
    ea, eb = _stores(tmp_path, held, held_y, "ea"), _stores(tmp_path, held[:, ::-1].copy(), held_y, "eb")
    config = TurtleConfig(n_clusters=3, steps=100, outer_lr=1e-2, inner_lr=1e-2, n_restarts=2, device="cpu")
    out = tmp_path / "turtle"
    metrics = run_turtle(out, [a.path, b.path], pca_components=4, config=config,
                         eval_features=[[ea.path, eb.path]], show_progress=False)
    clustering = load_clustering(out)
    assert clustering.method == "TURTLE" and clustering.sources == ["train", "ea"]
    assert metrics["train"]["fit_on_eval"]["acc"] == 1.0 and metrics["ea"]["fit_on_train"]["acc"] == 1.0
    assert (out / "pca_0.npz").is_file() and (out / "turtle.pt").is_file()
    stamp = (out / "turtle.pt").stat().st_mtime_ns
    assert run_turtle(out, [a.path, b.path], pca_components=4, config=config, eval_features=[[ea.path, eb.path]],
                      show_progress=False) == metrics
    assert (out / "turtle.pt").stat().st_mtime_ns == stamp  # finished: nothing recomputed
    with pytest.raises(NolabelError, match="other settings"):
        run_turtle(out, [a.path, b.path], config=config, show_progress=False)
    with pytest.raises(NolabelError, match="one feature folder per backbone"):
        run_turtle(tmp_path / "other", [a.path, b.path], config=config, eval_features=[[ea.path]])

    sl = run_turtle_selflabel(out, tmp_path / "selflabel", [a.path, b.path],
                              config=SelfLabelConfig(threshold=0.5, epochs=3, batch_size=60, lr=1e-2, device="cpu"),
                              eval_features=[[ea.path, eb.path]], show_progress=False)
    assert load_clustering(tmp_path / "selflabel").method == "TURTLE + self-labeling"
    assert sl["train"]["fit_on_eval"]["acc"] == 1.0 and sl["ea"]["fit_on_train"]["acc"] == 1.0
    # new images are assigned from one feature array per space, as the stage assigned its eval set
    from nolabel.clustering import assign

    for folder in (out, tmp_path / "selflabel"):
        found, confidence = assign(folder, [ea, eb])
        assert np.array_equal(found, load_clustering(folder).assignments["ea"].cluster)
        assert confidence.shape == (len(held),) and (confidence > 0).all()
    with pytest.raises(NolabelError, match="one feature array per backbone"):
        assign(out, ea.features)
    # each source keeps its stores, one per backbone: its images' place in TURTLE's spaces
    from nolabel.clustering import clustered_features

    clustering = load_clustering(out)
    assert [s.path.resolve() for s in clustering.stores("ea")] == [ea.path.resolve(), eb.path.resolve()]
    assert [s.path.resolve() for s in clustering.stores("train")] == [a.path.resolve(), b.path.resolve()]
    x = clustered_features(clustering, "ea")
    assert x.shape == (len(held), 8) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_cli_turtle(tmp_path, capsys):
    from nolabel.cli import main

    x, y = _blobs(40, 3, 6)
    a, b = _stores(tmp_path, x, y, "a"), _stores(tmp_path, x ** 2, y, "b")
    code = main(["turtle", "--features", str(a.path), str(b.path), "--n-clusters", "3", "--steps", "30",
                 "--outer-lr", "0.01", "--inner-lr", "0.01", "--restarts", "1", "--device", "cpu",
                 "--out", str(tmp_path / "t"), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "restart" in printed and "acc" in printed.lower()
    assert main(["turtle", "--features", str(a.path), "--eval-features", str(a.path) + "," + str(b.path),
                 "--out", str(tmp_path / "u"), "--quiet"]) == 2


def test_run_turtle_over_the_runs_space_and_another_then_self_labels(tmp_path):
    from nolabel.config import load_config
    from nolabel.pipeline import run

    overrides = ["name=t", "data.train=digits", "model.name=pixels", "extract.image_size=8", "pca.n_components=16",
                 "baseline.enabled=false", "report=false", "turtle.spaces=[pixels@16]", "turtle.pca=32",
                 "turtle.steps=20", "turtle.n_restarts=1", "turtle.outer_lr=0.01", "turtle.inner_lr=0.01",
                 "turtle.device=cpu", "selflabel.epochs=1", "selflabel.threshold=0.9", "selflabel.device=cpu"]
    summary = run(load_config(None, overrides), tmp_path / "r", progress=False, log=lambda line: None)
    families = [row["family"] for row in summary["rows"]]
    assert families == ["pixels + PCA + k-means", "pixels + pixels@16 + TURTLE",
                        "pixels + pixels@16 + TURTLE + self-labeling"]
    assert summary["primary"].endswith("turtle_selflabel")
    assert all(row["sources"][0]["metrics"]["acc"] > 0.3 for row in summary["rows"])
    # predicting the run's own images through both spaces reproduces the chosen (self-labeled) clustering
    from nolabel.clustering import load_clustering
    from nolabel.predict import predict

    found = predict(tmp_path / "r", "digits", progress=False)
    assert np.array_equal(found.cluster, load_clustering(summary["primary"]).assignments["train"].cluster)
    with pytest.raises(NolabelError, match="run's own space"):
        load_config(None, ["model.name=pixels", "turtle.spaces=[pixels]"])
    with pytest.raises(NolabelError, match="SCAN's or TURTLE's"):
        load_config(None, ["selflabel.epochs=1"])


def test_turtle_is_a_method_of_the_label_free_choice(tmp_path):
    from nolabel.config import load_config
    from nolabel.pipeline import run

    overrides = ["data.train=digits", "select.spaces=[pixels@8, pixels@16]", "select.n_clusters=[10]",
                 "select.methods=[kmeans, turtle]", "select.sample_size=500", "select.criterion=generalization",
                 "baseline.enabled=false", "report=false", "turtle.steps=20", "turtle.n_restarts=1",
                 "turtle.pca=32", "turtle.outer_lr=0.01", "turtle.inner_lr=0.01", "turtle.device=cpu"]
    summary = run(load_config(None, overrides), tmp_path / "r", progress=False, log=lambda line: None)
    methods = [row["method"] for row in summary["rows"]]
    assert "pixels@8 + pixels@16 + TURTLE, K = 10" in methods and len(methods) == 3
    assert all("generalization" in row["label_free"] for row in summary["rows"])
    with pytest.raises(NolabelError, match="add a turtle section"):
        load_config(None, ["select.methods=[kmeans, turtle]"])


def test_split_levels_reads_each_level_of_a_multilevel_feature_as_a_space(tmp_path):
    from nolabel.clustering import assign, load_clustering
    from nolabel.models import feature_parts

    # efficientnet_lite0_multilevel's six levels, synthetic: levels 0-2 confuse classes 0 and 1, levels 3-5
    # classes 2 and 3
    parts = feature_parts("efficientnet_lite0_multilevel")
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 40)

    def level(width: int, groups: list[int]) -> np.ndarray:
        centres = rng.normal(0, 1, (max(groups) + 1, width))
        return centres[np.asarray(groups)[y]] + rng.normal(0, 0.3, (len(y), width))

    x = np.concatenate([level(w, [0, 0, 1, 2] if i < 3 else [0, 1, 2, 2]) for i, w in enumerate(parts)], axis=1)
    store = _stores(tmp_path, x.astype(np.float32), y, "efficientnet_lite0_multilevel")
    config = TurtleConfig(n_clusters=4, steps=150, outer_lr=1e-2, n_restarts=1, device="cpu")
    metrics = run_turtle(tmp_path / "split", [store.path], pca_components=8, split_levels=True, config=config,
                         show_progress=False)
    summary = json.loads((tmp_path / "split" / "turtle.json").read_text())
    assert summary["parts"] == [list(parts)] and summary["dims"] == [8] * 6
    assert sorted(p.name for p in (tmp_path / "split").glob("pca_*.npz")) == [f"pca_{i}.npz" for i in range(6)]
    assert metrics["train"]["fit_on_eval"]["acc"] == 1.0
    found, _ = assign(tmp_path / "split", [store])  # new images are cut into the same levels
    assert np.array_equal(found, load_clustering(tmp_path / "split").assignments["train"].cluster)
    # without split_levels the same store is one space
    whole = run_turtle(tmp_path / "whole", [store.path], pca_components=8, config=config, show_progress=False)
    assert json.loads((tmp_path / "whole" / "turtle.json").read_text())["parts"] == [[sum(parts)]]
    assert whole["train"]["n"] == len(y)


def test_config_counts_outer_steps_and_names_the_old_key():
    from nolabel.config import load_config

    with pytest.raises(NolabelError, match="epochs is now steps"):
        load_config(None, ["turtle.epochs=30"])
    with pytest.raises(NolabelError, match="inner_start"):
        load_config(None, ["turtle.inner_start=lukewarm"])
    cfg = load_config(None, ["turtle.steps=30", "turtle.split_levels=true"])
    assert cfg.turtle.library_config().steps == 30 and cfg.turtle.split_levels


def test_cold_start_draws_fresh_classifiers_every_step():
    x, _ = _blobs(30, 3, 5)
    runs = {start: train_turtle([x], TurtleConfig(n_clusters=3, steps=5, inner_steps=2, n_restarts=1,
                                                  inner_start=start, device="cpu"), show_progress=False)
            for start in ("cold", "warm")}
    # after the first step a warm start's classifiers have trained on the earlier batches too: they fit
    # the labelling better than the 2 steps of fresh ones do
    cold, warm = ([h["fit"] for h in runs[s].history[0]] for s in ("cold", "warm"))
    assert all(w < c for c, w in zip(cold[2:], warm[2:])), (cold, warm)


def test_a_task_encoder_of_the_earlier_layout_is_refused(tmp_path):
    from nolabel.cluster.turtle import load_turtle

    x, _ = _blobs(20, 2, 3)
    result = train_turtle([x], TurtleConfig(n_clusters=2, steps=2, n_restarts=1, device="cpu"), out_dir=tmp_path,
                          show_progress=False)
    task, saved = load_turtle(result.checkpoint)
    assert task.dims == [3] and saved["version"] == 2
    torch.save({key: value for key, value in saved.items() if key != "version"}, tmp_path / "old.pt")
    with pytest.raises(NolabelError, match="earlier nolabel"):
        load_turtle(tmp_path / "old.pt")
