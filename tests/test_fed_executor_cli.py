"""``distsched simulate --executor local|ray|auto``: small runs start without Ray, with results equal
to the Ray actor pool's bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distsched.commands.simulate import AUTO_LOCAL_UPDATES, choose_executor
from distsched.config import load_yaml
from distsched.federated.config import fed_config
from distsched.report import read_metrics

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "fed_digits.yaml"


def test_auto_is_local_for_small_runs_and_ray_for_large_ones_or_a_cluster():
    cfg = fed_config(load_yaml(EXAMPLE))  # 30 rounds x 20 clients = 600 updates
    assert choose_executor("auto", None, cfg) == "local"
    assert choose_executor("auto", "127.0.0.1:6379", cfg) == "ray"
    big = fed_config({**load_yaml(EXAMPLE), "rounds": AUTO_LOCAL_UPDATES // 20 + 1})
    assert choose_executor("auto", None, big) == "ray"
    frac = fed_config({**load_yaml(EXAMPLE), "sampling": {"fraction": 0.5}, "rounds": AUTO_LOCAL_UPDATES // 50})
    assert choose_executor("auto", None, frac) == "local"  # 0.5 * 100 clients per round
    assert choose_executor("ray", None, cfg) == "ray" and choose_executor("local", None, cfg) == "local"
    with pytest.raises(ValueError, match="--executor ray"):
        choose_executor("local", "127.0.0.1:6379", cfg)


def _simulate(tmp_path: Path, *extra: str) -> tuple[dict, list[dict], bool]:
    """Run the CLI in a fresh interpreter; returns its JSON summary, metrics and whether Ray was imported."""
    code = ("import sys; from distsched.cli import main; rc = main(sys.argv[1:]); "
            "print('RAY_IMPORTED', 'ray' in sys.modules); sys.exit(rc)")
    cmd = [sys.executable, "-c", code, "simulate", str(EXAMPLE), "--rounds", "2", "--num-actors", "2",
           "--out", str(tmp_path), "--no-progress", "--json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    text, _, flag = out.stdout.rpartition("RAY_IMPORTED")
    summary = json.loads(text)
    return summary, read_metrics(Path(summary["run_dir"]) / "metrics.jsonl"), flag.strip() == "True"


def test_local_executor_runs_without_importing_ray(tmp_path):
    summary, rows, ray_imported = _simulate(tmp_path, "--executor", "local")
    assert not ray_imported
    assert summary["rounds"] == 2 and summary["client_updates"] == 40 and len(rows) == 2


def test_unknown_executor_is_one_line_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "distsched", "simulate", str(EXAMPLE), "--executor", "gpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "invalid choice: 'gpu'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_local_and_ray_executors_give_the_same_run_bit_for_bit(ray_cluster, tmp_path):
    local, local_rows, _ = _simulate(tmp_path / "local", "--executor", "local")
    ray, ray_rows, _ = _simulate(tmp_path / "ray", "--executor", "ray", "--address", ray_cluster["address"])
    keys = ("round", "test_acc", "test_loss", "train_loss", "trained", "update_norm")
    assert [{k: r.get(k) for k in keys} for r in local_rows] == [{k: r.get(k) for k in keys} for r in ray_rows]
    assert local["final_test_acc"] == ray["final_test_acc"] and local["client_updates"] == ray["client_updates"]
