"""``distsched diagnose`` on run folders written with the library's own MetricsWriter, and on CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np

from distsched.cli import main
from distsched.report import MetricsWriter, RunFolder
from tests.test_analysis_diagnosis import quadratic_sgd, regression_sgd


def _run_folder(tmp_path, records):
    folder = RunFolder.create(tmp_path, "run")
    folder.write_config({"name": "test"})
    with MetricsWriter(folder.metrics_path) as w:
        for r in records:
            w.write(r)
    return folder.root


def test_train_style_run_folder_premature_decay(tmp_path, capsys):
    loss, lr = quadratic_sgd(lambda t: 0.985**t, seed=1)
    root = _run_folder(tmp_path, [{"step": t, "lr": r, "H": 1, "loss": v} for t, (v, r) in enumerate(zip(loss, lr))])
    assert main(["diagnose", str(root)]) == 0
    out = capsys.readouterr().out
    assert "verdict: underfitting" in out and "remedy: a higher minimum LR (min_lr)" in out
    assert main(["diagnose", str(root / "metrics.jsonl"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "underfitting" and data["evidence"]


def test_federated_style_rounds_with_test_loss(tmp_path, capsys):
    # find a seed whose validation curve truly rises by > 8% (ground truth), then diagnose its rounds
    for seed in range(8):
        tr, va, lr = regression_sgd(lambda t: 0.01, seed)
        if va[-100:].mean() / va.min() - 1 > 0.08:
            break
    records = [{"round": i, "client_lr": float(lr[i]), "train_loss": float(tr[i]),
                "test_loss": float(va[i]) if i % 10 == 0 else None} for i in range(len(tr))]
    root = _run_folder(tmp_path, [{k: v for k, v in r.items() if v is not None} for r in records])
    assert main(["diagnose", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "overfitting"
    assert any("early stopping" in r for r in data["remedies"])


def test_csv_and_explicit_keys(tmp_path, capsys):
    loss, _ = quadratic_sgd(lambda t: 0.5, seed=2)
    path = tmp_path / "metrics.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["iter", "objective", "val_loss"])  # a sparse validation column: empty cells are skipped
        w.writerows([t, v, v if t % 100 == 0 else ""] for t, v in enumerate(loss))
    assert main(["diagnose", str(path), "--train-key", "objective", "--step-key", "iter"]) == 0
    assert "verdict: plateau" in capsys.readouterr().out


def test_subprocess_divergence_and_errors(tmp_path):
    loss, lr = quadratic_sgd(lambda t: min(1.0, t / 500) * 2.3, seed=0)
    root = _run_folder(tmp_path, [{"step": t, "lr": r, "loss": v} for t, (v, r) in enumerate(zip(loss, lr))])
    # MetricsWriter stores inf as 1e308: still a divergence
    cmd = [sys.executable, "-m", "distsched", "diagnose", str(root)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "verdict: divergence" in res.stdout
    # inf is stored as 1e308 and NaN as null; |loss| >= 1e300 counts as infinite (documented)
    first_bad = int(np.argmax(~(np.abs(loss) < 1e300)))
    assert f"from step {first_bad} on" in res.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([sys.executable, "-m", "distsched", "diagnose", str(empty)], capture_output=True, text=True)
    assert res.returncode == 2 and "no metrics.jsonl" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-m", "distsched", "diagnose", str(root), "--val-key", "nope"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "'nope'" in res.stderr
