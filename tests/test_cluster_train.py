"""Ray Train end to end: ``distsched train`` from the CLI, a worker killed mid-run, resuming an
interrupted run (started without Ray) and a finished run from the CLI.

Reference: the uninterrupted CLI run. Every other run uses the same config and seed and must end
with the same parameters on every worker, the same engine counters and the same metrics records.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distsched.report import RunFolder, read_metrics
from distsched.train import FaultInjection, config_from_mapping, prepare_run, run_processes
from distsched.train.checkpoint import checkpoint_name, latest_checkpoint, load_rank_state

STEPS = 160
CFG = {
    "name": "ray2",
    "seed": 3,
    "workers": 2,
    "steps": STEPS,
    "batch_size": 16,
    "log_every": 10,
    "model": {"name": "mlp", "hidden": [32]},
    "data": {"name": "digits", "partition": "label_skew", "alpha": 1.0},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS, "min_lr": 0.001},
    "sync": {"rule": "qsr", "h_base": 2, "alpha": 0.1414, "h_max": 16},
    "checkpoint": {"every": 50, "keep": 2},
}
KILL_AT = 120  # rank 1 dies before step 120; the last checkpoint is at step 100


def _cli(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "distsched", "train", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _final_states(folder: RunFolder) -> list[dict]:
    final = folder.checkpoints / checkpoint_name(STEPS)
    return [load_rank_state(final, r) for r in range(CFG["workers"])]


def _records(folder: RunFolder) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(folder.metrics_path)]


def _assert_same_run(folder: RunFolder, ref: RunFolder) -> None:
    got, want = _final_states(folder), _final_states(ref)
    for g, w in zip(got, want):
        assert g["step"] == w["step"] == STEPS
        for name in w["model"]:
            torch.testing.assert_close(g["model"][name], w["model"][name], rtol=0, atol=0)
        for key in ("rounds", "bytes_sent", "current_period", "rule"):
            assert g["engine"][key] == w["engine"][key]
        assert g["sampler"] == w["sampler"]
    records = _records(folder)
    assert [r["step"] for r in records] == list(range(10, STEPS + 1, 10))  # no step logged twice
    assert records == _records(ref)


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory) -> tuple[RunFolder, subprocess.CompletedProcess]:
    base = tmp_path_factory.mktemp("ray_cli")
    cfg_path = base / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({**CFG, "workers": 1}), encoding="utf-8")
    proc = _cli(str(cfg_path), "--address", ray_cluster["address"], "--workers", "2", "--out", str(base / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root,) = (base / "runs").iterdir()
    return RunFolder(root), proc


def test_cli_run_folder_and_progress(reference):
    folder, proc = reference
    assert root_name_ok(folder.root.name)
    assert config_from_mapping(folder.read_config()) == config_from_mapping(CFG)  # --workers 2 recorded
    summary = yaml.safe_load(folder.summary_path.read_text())
    assert summary["steps_done"] == summary["total_steps"] == STEPS
    assert summary["workers"] == 2 and summary["sync_rounds"] > 0
    assert summary["bytes_sent"] == _final_states(folder)[0]["engine"]["bytes_sent"] > 0
    assert 0.5 < summary["test_accuracy"] <= 1.0
    assert sorted(p.name for p in folder.plots.iterdir()) == [
        "dashboard.png", "loss.png", "lr.png", "period.png", "rounds.png"]  # the CLI adds the dashboard
    assert f"dashboard: {folder.plots / 'dashboard.png'}" in proc.stdout
    # the final sync leaves every worker with the same model
    a, b = _final_states(folder)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name])
    # progress on the driver: step, lr, H, loss, rounds, bytes for every record
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert any(ln.startswith(f"step {STEPS}/{STEPS}  lr ") and " H " in ln and " bytes " in ln for ln in lines)
    assert len(lines) >= STEPS // CFG["log_every"]


def root_name_ok(name: str) -> bool:
    return name.startswith("ray2-") and len(name) >= len("ray2-YYYYmmdd-HHMMSS")


def test_killed_worker_resumes_exactly(ray_cluster, reference, tmp_path):
    from distsched.cluster import train_on_ray

    ref, _ = reference
    folder, cfg = prepare_run(config_from_mapping(CFG), run_dir=tmp_path / "fault")
    marker = tmp_path / "killed"
    summary = train_on_ray(cfg, folder, max_failures=2, progress=False,
                           fault=FaultInjection(rank=1, step=KILL_AT, marker=str(marker)))
    assert marker.exists()  # the worker process really died once
    # Ray registers a checkpoint once its controller has taken the report in; a report made just
    # before the kill may not be, so the run resumes from step 100 or from step 50
    assert summary["resumed_from_step"] in (50, 100)
    _assert_same_run(folder, ref)


def test_interrupted_run_resumes_from_cli(ray_cluster, reference, tmp_path):
    ref, _ = reference
    folder, cfg = prepare_run(config_from_mapping(CFG), run_dir=tmp_path / "interrupted")
    with pytest.raises(Exception, match="terminated|exited|signal"):  # noqa: B017 - the kill ends the job
        run_processes(cfg, folder, fault=FaultInjection(rank=1, step=KILL_AT, marker=str(tmp_path / "m")))
    assert latest_checkpoint(folder.checkpoints).name == checkpoint_name(100)
    assert not folder.summary_path.exists()
    proc = _cli("--resume", str(folder.root), "--address", ray_cluster["address"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(folder, ref)


@pytest.mark.slow
def test_finished_run_resumes_as_finished(ray_cluster, reference):
    """Slow (one more Ray Train launch). Covered fast by the parts: the worker loop (the same under every
    launcher) resuming a finished run takes no step and keeps its records and results
    (tests/test_console.py::test_processes_launcher_checks_the_config_once_on_the_driver), and the Ray
    launcher's ``--resume`` from the CLI (test_interrupted_run_resumes_from_cli)."""
    folder, _ = reference
    before_records = _records(folder)
    before = yaml.safe_load(folder.summary_path.read_text())
    proc = _cli("--resume", str(folder.root), "--address", ray_cluster["address"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = yaml.safe_load(folder.summary_path.read_text())
    assert _records(folder) == before_records
    assert after["resumed_from_step"] == STEPS
    for key in ("steps_done", "final_loss", "test_accuracy", "test_loss", "sync_rounds", "bytes_sent"):
        assert after[key] == before[key]
    assert Path(after["run_dir"]) == folder.root
