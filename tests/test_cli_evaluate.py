"""`nolabel evaluate`: reads id files, prints the metrics table or JSON, fails cleanly on bad input."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from nolabel import metrics as M
from nolabel.cli import main

NOLABEL = Path(sys.executable).parent / "nolabel"


@pytest.fixture
def split(tmp_path):
    """Noisy clusters of 8 classes: train and val files in .npy and .csv form."""
    rng = np.random.default_rng(0)
    paths = {}
    for name, n in (("train", 2_000), ("val", 500)):
        labels = rng.integers(0, 8, n)
        pred = np.where(rng.random(n) < 0.7, (labels * 3) % 11, rng.integers(0, 11, n))
        np.save(tmp_path / f"{name}_pred.npy", pred)
        (tmp_path / f"{name}_labels.csv").write_text("label\n" + "\n".join(map(str, labels)) + "\n")
        paths[name] = (pred, labels)
    return tmp_path, paths


def test_table_shows_every_metric(split, capsys):
    folder, data = split
    pred, labels = data["val"]
    code = main(
        ["evaluate", "--pred", str(folder / "val_pred.npy"), "--labels", str(folder / "val_labels.csv")]
    )
    assert code == 0
    out = capsys.readouterr().out
    lines = dict(line.rsplit(None, 1) for line in out.splitlines()[2:])
    assert out.splitlines()[0] == "ACC mapping: hungarian, fitted on the evaluated predictions"
    assert float(lines["ACC hungarian"]) == pytest.approx(M.accuracy(labels, pred), abs=5e-7)
    assert float(lines["NMI (arithmetic)"]) == pytest.approx(
        skm.normalized_mutual_info_score(labels, pred), abs=5e-7
    )
    assert float(lines["AMI (arithmetic)"]) == pytest.approx(
        skm.adjusted_mutual_info_score(labels, pred), abs=5e-7
    )
    assert float(lines["ARI"]) == pytest.approx(skm.adjusted_rand_score(labels, pred), abs=5e-7)
    assert (lines["samples"], lines["clusters"], lines["classes"]) == ("500", "11", "8")


def test_json_with_train_fit_equals_the_library(split, capsys):
    folder, data = split
    args = [
        "evaluate", "--pred", str(folder / "val_pred.npy"), "--labels", str(folder / "val_labels.csv"),
        "--fit-pred", str(folder / "train_pred.npy"), "--fit-labels", str(folder / "train_labels.csv"),
        "--mapping", "majority", "--average-method", "geometric", "--json",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    (val_pred, val_labels), (train_pred, train_labels) = data["val"], data["train"]
    expected = M.evaluate(
        val_labels, val_pred, method="majority", fit=(train_labels, train_pred),
        average_method="geometric",
    )
    assert result == expected
    assert (result["fit_on"], result["mapping"], result["n_fit"]) == ("train", "majority", 2_000)


@pytest.mark.parametrize(
    "pred_text, labels_text, extra, message",
    [
        ("0\n1\n2\n", "0\n1\n", [], "pred has 3 samples but labels has 2"),
        ("", "", [], "--pred file .*: is empty"),
        ("0\n1.5\n", "0\n1\n", [], r"line 2 \('1.5'\) is not an integer id"),
        ("0\nNaN\n", "0\n1\n", [], r"line 2 \('NaN'\) is not an integer id"),
        ("0\n1\n", "0\n1\n", ["--fit-pred", "PRED"], "--fit-pred and --fit-labels go together"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, pred_text, labels_text, extra, message):
    (tmp_path / "pred.txt").write_text(pred_text)
    (tmp_path / "labels.txt").write_text(labels_text)
    extra = [str(tmp_path / "pred.txt") if arg == "PRED" else arg for arg in extra]
    files = ["--pred", str(tmp_path / "pred.txt"), "--labels", str(tmp_path / "labels.txt")]
    code = main(["evaluate", *files, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("nolabel evaluate: error: ")
    assert re.search(message, err)


def test_missing_and_unreadable_files_exit_2(tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("0\n1\n")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "latin1.csv").write_bytes(b"\xe9t\xe9\n1\n")
    for pred_file, message in [
        ("nope.npy", "nope.npy: not found"),
        ("broken.npy", "not a readable .npy array"),
        ("latin1.csv", "cannot be read as UTF-8 text"),
    ]:
        args = ["evaluate", "--pred", str(tmp_path / pred_file), "--labels", str(tmp_path / "labels.txt")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_installed_command_runs_and_fails_cleanly(split, tmp_path):
    folder, data = split
    ok = subprocess.run(
        [str(NOLABEL), "evaluate", "--pred", str(folder / "val_pred.npy"),
         "--labels", str(folder / "val_labels.csv"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    pred, labels = data["val"]
    assert json.loads(ok.stdout)["ari"] == pytest.approx(skm.adjusted_rand_score(labels, pred), abs=1e-9)
    (tmp_path / "short.txt").write_text("1\n")
    bad = subprocess.run(
        [str(NOLABEL), "evaluate", "--pred", str(tmp_path / "short.txt"),
         "--labels", str(folder / "val_labels.csv")],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "nolabel evaluate: error: pred has 1 samples but labels has 500; "
        "they must describe the same samples in the same order"
    )
    assert "Traceback" not in bad.stderr
