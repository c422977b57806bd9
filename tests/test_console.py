"""Issue 12.8: the launchers print the same console output: the header (run folder first, then name,
workers, steps and launcher), one progress line per metrics record, and the final line. Checked on
``--launcher processes`` against torchrun (launch/torchrun.sh) on the same config: after replacing the
run folder, the launcher's name and the wall-clock times, the two outputs are identical."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distsched.sync import free_port

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
CFG = {
    "name": "console", "seed": 0, "workers": 2, "steps": STEPS, "batch_size": 16, "log_every": 10,
    "model": {"name": "mlp", "hidden": [8]}, "data": {"name": "digits"},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS}, "sync": {"rule": "fixed", "h": 2},
    "checkpoint": {"every": 10, "keep": 1},
}


def _normalized(out: str, run_dir: Path, launcher: str) -> list[str]:
    text = out.replace(str(run_dir), "RUN").replace(f"launcher {launcher}", "launcher L")
    text = re.sub(r"training [0-9.]+ s", "training T s", text)
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_processes_and_torchrun_print_the_same_header_progress_and_final_line(tmp_path):
    """Slow (two 2-worker launches, ~50 s). Faster cover: the processes launcher's progress and final line
    (``test_processes_launcher_checks_the_config_once_on_the_driver``), torchrun's progress lines and run
    (``tests/test_launch.py::test_torchrun_launcher_two_gloo_processes``)."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(CFG))
    env = {**os.environ, "PYTHON": sys.executable, "NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    runs = {}
    cmd = {"processes": [sys.executable, "-m", "distsched", "train", str(cfg_path), "--launcher", "processes",
                         "--run-dir", str(tmp_path / "processes")],
           "torchrun": [str(ROOT / "launch" / "torchrun.sh"), str(cfg_path), str(tmp_path / "torchrun")]}
    for launcher, argv in cmd.items():
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[launcher] = _normalized(proc.stdout, tmp_path / launcher, launcher)
    lines = runs["processes"]
    assert lines[0] == "run folder: RUN"  # printed once, first
    assert lines[1] == f"console: 2 worker(s), {STEPS} steps, launcher L"
    assert [ln.split("  ")[0] for ln in lines[2:4]] == [f"step 10/{STEPS}", f"step {STEPS}/{STEPS}"]
    assert lines[4].startswith(f"steps {STEPS}/{STEPS}  final loss ") and "test accuracy" in lines[4]
    assert lines[5] == "dashboard: RUN/plots/dashboard.png" and len(lines) == 6
    assert runs["torchrun"] == lines  # same lines, same numbers (same training, same seeds)


_COUNTED_MODEL = '''
import os
from distsched.data import mlp

def counted_mlp(input_shape, num_classes, log):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    return mlp(input_shape, num_classes, [4])
'''


def test_processes_launcher_checks_the_config_once_on_the_driver(tmp_path, monkeypatch, capsys):
    """The driver's preflight (data, shards, model, one batch) runs once per command, for a new run and
    for a resume; the workers build their own model. Counted with a user model factory that logs the pid
    of every process that builds it. Before: the driver built it 3 times (the command, the header, and
    run_processes) for a new run, twice on a resume. The resume is of the finished run: no step is taken,
    its records and results stay as they were (the worker loop is the Ray launcher's too)."""
    from distsched.cli import main

    (tmp_path / "counted_model.py").write_text(_COUNTED_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    log = tmp_path / "builds.log"
    cfg = {**CFG, "workers": 1, "steps": 4, "log_every": 2, "checkpoint": {"every": 4, "keep": 1},
           "schedule": {"name": "constant", "lr": 0.1}, "sync": {"name": "fixed", "h": 1},
           "model": {"name": "counted_model:counted_mlp", "kwargs": {"log": str(log)}}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"

    def builds() -> tuple[int, int]:
        pids = [int(p) for p in log.read_text().split()]
        log.write_text("")
        return pids.count(os.getpid()), sum(p != os.getpid() for p in pids)

    assert main(["train", str(cfg_path), "--launcher", "processes", "--run-dir", str(run), "--no-progress"]) == 0
    assert builds() == (1, 1)  # (driver, worker)
    assert "steps 4/4  final loss" in capsys.readouterr().out
    records, before = (run / "metrics.jsonl").read_text(), json.loads((run / "summary.json").read_text())
    assert main(["train", "--resume", str(run), "--launcher", "processes", "--no-progress"]) == 0
    assert builds() == (1, 1)
    assert "steps 4/4  final loss" in capsys.readouterr().out
    after = json.loads((run / "summary.json").read_text())
    assert (run / "metrics.jsonl").read_text() == records and after["resumed_from_step"] == 4
    for key in ("steps_done", "final_loss", "test_accuracy", "test_loss", "sync_rounds", "bytes_sent", "run_dir"):
        assert after[key] == before[key], key
