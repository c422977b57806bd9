"""The example configs end to end (slow: full-length runs). The fast tests in test_cluster_train.py and
test_launch.py cover the same paths with shorter runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distsched.report import read_metrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distsched", "train", *args, "--no-progress"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)


@pytest.mark.slow
def test_demo_config_on_ray(ray_cluster, tmp_path):
    """``distsched demo`` trains this config: QSR starts at H = 2 and stretches to the cap as the LR decays."""
    proc = _train(str(EXAMPLES / "digits_qsr.yaml"), "--address", ray_cluster["address"], "--run-dir",
                  str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    records = read_metrics(tmp_path / "demo" / "metrics.jsonl")
    assert summary["steps_done"] == 600 and summary["test_accuracy"] >= 0.95
    assert records[0]["H"] == 2 and max(r["H"] for r in records) == 32
    assert summary["sync_rounds"] < 600 // 2  # fewer syncs than H = 2 throughout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_noniid.yaml", "synthetic_adacomm.yaml"])
def test_other_examples_with_local_processes(tmp_path, name):
    proc = _train(str(EXAMPLES / name), "--launcher", "processes", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps_done"] == summary["total_steps"]
    assert summary["test_accuracy"] >= 0.9
