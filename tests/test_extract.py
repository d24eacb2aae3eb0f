"""Feature extraction: equals a direct forward pass, resumes exactly after kill -9, shards exactly
under torchrun, skips and lists bad images, and never overwrites a finished store silently."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distributed_helpers import SINGLE_THREAD_ENV, run_torchrun

from nolabel.cli import main
from nolabel.data import load
from nolabel.errors import NolabelError
from nolabel.features import ExtractOptions, extract
from nolabel.models import create
from nolabel.models.checkpoints import save_checkpoint
from nolabel.store import FeatureStore

MODEL = "resnet18"
SIZE = 32
ENV = SINGLE_THREAD_ENV


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    save_checkpoint(create(MODEL, pretrained=False), path)
    return path


def _script(out: Path, weights: Path, data: str = "digits", batch_size: int = 16, checkpoint_seconds: float = 0.0,
            sleep_per_batch: float = 0.0, backend: str = "torch") -> str:
    """A standalone extraction run, optionally slowed down so a test can kill it mid-way (in torch:
    an exported graph would not run the Python that sleeps)."""
    return textwrap.dedent(f"""
        import time, torch
        torch.set_num_threads(1)
        from nolabel.features import ExtractOptions, extract
        from nolabel.models import create
        backbone = create({MODEL!r}, weights={str(weights)!r})
        if {sleep_per_batch}:
            forward = backbone.forward
            def slow(x):
                time.sleep({sleep_per_batch})
                return forward(x)
            backbone.forward = slow
        extract({data!r}, backbone, {str(out)!r}, options=ExtractOptions(
            batch_size={batch_size}, image_size={SIZE}, dtype="float32", workers=0,
            checkpoint_seconds={checkpoint_seconds}, backend={backend!r}), progress=False)
    """)


def _run(script: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], env=ENV, capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_extract_equals_direct_forward_pass(tmp_path, weights):
    store = extract("digits", create(MODEL, weights=str(weights)), tmp_path / "f",
                    options=ExtractOptions(batch_size=100, image_size=SIZE, dtype="float32", workers=1),
                    progress=False)
    ds = load("digits")
    backbone = create(MODEL, weights=str(weights)).eval()
    transform = backbone.eval_transform(SIZE)
    with torch.inference_mode():
        x = torch.stack([transform(ds[i][0]) for i in range(0, len(ds), 97)])
        expected = backbone(x).numpy()
    np.testing.assert_allclose(store.features[::97], expected, rtol=1e-4, atol=1e-4)
    assert store.features.shape == (len(ds), 512)
    np.testing.assert_array_equal(store.labels, ds.labels)
    assert store.items == list(ds.item_names)
    m = store.manifest
    assert m["complete"] and m["n"] == len(ds) and m["dim"] == 512 and m["n_skipped"] == 0
    assert m["dataset"] == "digits" and m["model"] == MODEL and m["transform"]["image_size"] == SIZE
    assert len(m["weights_sha256"]) == 64
    assert not (tmp_path / "f" / ".partial").exists()


def test_rerun_is_up_to_date_and_other_settings_need_force(tmp_path, weights):
    opts = ExtractOptions(batch_size=512, image_size=SIZE, workers=0)
    backbone = create(MODEL, weights=str(weights))
    extract("digits", backbone, tmp_path / "f", options=opts, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").iterdir()}
    said = []
    again = extract("digits", backbone, tmp_path / "f", options=opts, progress=False, log=said.append)
    assert again.n == 1797 and "up to date" in said[0]
    first_fingerprint = again.fingerprint
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").iterdir()} == before  # nothing rewritten
    # another image size: refused, naming what changed, and the finished store is left as it was
    with pytest.raises(NolabelError, match=r"transform\.image_size.*--force"):
        extract("digits", backbone, tmp_path / "f", options=ExtractOptions(batch_size=512, image_size=24, workers=0),
                progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").iterdir()} == before
    replaced = extract("digits", backbone, tmp_path / "f", force=True, progress=False,
                       options=ExtractOptions(batch_size=512, image_size=24, workers=0))
    assert replaced.manifest["transform"]["image_size"] == 24 and replaced.fingerprint != first_fingerprint


def test_cli_rerun_of_a_finished_extraction_exits_0(tmp_path, capsys):
    args = ["extract", "--data", "digits", "--model", "pixels", "--image-size", "8", "--out", str(tmp_path / "f"),
            "--quiet"]
    assert main(args) == 0
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert main([*args, "--precision", "bf16"]) == 2
    assert "precision differ" in capsys.readouterr().err


def test_changed_image_content_changes_the_fingerprint(tmp_path, weights):
    _write_image_folder(tmp_path / "imgs")
    opts = ExtractOptions(batch_size=4, image_size=SIZE, workers=0)
    first = extract(f"folder:{tmp_path / 'imgs'}", "pixels", tmp_path / "f", options=opts, progress=False)
    first_fingerprint, first_row = first.fingerprint, np.array(first.features[first.items.index("cats/1.png")])
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "imgs" / "cats" / "1.png")
    with pytest.raises(NolabelError, match="data_fingerprint differ"):
        extract(f"folder:{tmp_path / 'imgs'}", "pixels", tmp_path / "f", options=opts, progress=False)
    second = extract(f"folder:{tmp_path / 'imgs'}", "pixels", tmp_path / "f", options=opts, force=True,
                     progress=False)
    assert second.fingerprint != first_fingerprint
    assert not np.array_equal(second.features[second.items.index("cats/1.png")], first_row)


def test_kill_9_then_resume_gives_identical_features(tmp_path, weights):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    done = _run(_script(reference, weights))
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen([sys.executable, "-c", _script(resumed, weights, sleep_per_batch=0.05)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = resumed / ".partial" / "progress.rank0.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if progress.exists() and json.loads(progress.read_text())["next_batch"] >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads(progress.read_text())["next_batch"]
    assert 20 <= stopped_at < 113, "the run should have been killed mid-way"
    with pytest.raises(NolabelError, match="did not finish"):
        FeatureStore.open(resumed)

    again = _run(_script(resumed, weights))
    assert again.returncode == 0, again.stderr
    a, b = FeatureStore.open(reference), FeatureStore.open(resumed)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_two_gloo_processes_equal_one(tmp_path, weights):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert _run(_script(single, weights, batch_size=50)).returncode == 0
    script = tmp_path / "extract_script.py"
    script.write_text(_script(sharded, weights, batch_size=50))
    done = run_torchrun(script)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = FeatureStore.open(single), FeatureStore.open(sharded)
    assert b.manifest["world_size"] == 2
    np.testing.assert_array_equal(a.features, b.features)
    assert a.items == b.items


def _write_image_folder(root: Path) -> list[str]:
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    good = root / "cats" / "0.png"
    jpeg = root / "dogs" / "truncated.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "cats" / "notes.jpg").write_text("not an image")
    assert good.exists()
    return ["cats/notes.jpg", "dogs/empty.png", "dogs/truncated.jpg"]


def test_bad_images_are_skipped_and_listed(tmp_path, weights):
    bad = _write_image_folder(tmp_path / "imgs")
    store = extract(f"folder:{tmp_path / 'imgs'}", create(MODEL, weights=str(weights)), tmp_path / "f",
                    options=ExtractOptions(batch_size=4, image_size=SIZE, workers=1), progress=False)
    assert store.n == 10 and store.manifest["n_skipped"] == 3
    assert not any(item in store.items for item in bad)
    np.testing.assert_array_equal(store.labels, [0] * 5 + [1] * 5)
    with open(store.path / "skipped.csv", newline="") as f:
        skipped = {row["item"]: row["reason"] for row in csv.DictReader(f)}
    assert sorted(skipped) == bad and all(skipped.values())
    # the kept rows are the features of the good images, in order
    backbone = create(MODEL, weights=str(weights)).eval()
    ds = load(f"folder:{tmp_path / 'imgs'}")
    with torch.inference_mode():
        i = list(ds.item_names).index("dogs/4.png")
        expected = backbone(backbone.eval_transform(SIZE)(ds[i][0])[None]).numpy()[0]
    np.testing.assert_allclose(store.features[store.items.index("dogs/4.png")], expected, rtol=1e-2, atol=1e-2)


def test_bad_image_fails_the_run_when_asked_and_keeps_progress(tmp_path, weights):
    _write_image_folder(tmp_path / "imgs")
    with pytest.raises(NolabelError, match="notes.jpg"):
        extract(f"folder:{tmp_path / 'imgs'}", create(MODEL, weights=str(weights)), tmp_path / "f",
                options=ExtractOptions(batch_size=2, image_size=SIZE, workers=0, on_bad_image="fail",
                                       checkpoint_seconds=0), progress=False)
    progress = json.loads((tmp_path / "f" / ".partial" / "progress.rank0.json").read_text())
    assert progress["next_batch"] >= 1  # the batches before the bad image are kept for a rerun


def test_resume_with_other_settings_is_refused(tmp_path, weights):
    _write_image_folder(tmp_path / "imgs")
    spec, backbone = f"folder:{tmp_path / 'imgs'}", create(MODEL, weights=str(weights))
    with pytest.raises(NolabelError, match="notes.jpg"):  # stops part-way, keeping its batches
        extract(spec, backbone, tmp_path / "f", progress=False,
                options=ExtractOptions(batch_size=2, image_size=SIZE, workers=0, on_bad_image="fail",
                                       checkpoint_seconds=0))
    progress_file = tmp_path / "f" / ".partial" / "progress.rank0.json"
    kept = progress_file.read_text()
    with pytest.raises(NolabelError, match="batch_size differ"):
        extract(spec, backbone, tmp_path / "f", progress=False,
                options=ExtractOptions(batch_size=16, image_size=SIZE, workers=0, on_bad_image="fail"))
    assert progress_file.read_text() == kept  # the partial work is left as it was


def test_cli_extract_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["extract", "--data", "no-such-dataset", "--model", MODEL, "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nolabel extract: error:") and "\n" not in err
    assert main(["extract", "--data", "digits", "--model", MODEL, "--out", str(tmp_path / "f"),
                 "--batch-size", "0"]) == 2
