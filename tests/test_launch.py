"""launch/: shellcheck-clean scripts, a valid Ray cluster-launcher YAML, the NCCL env file, and the
torchrun launcher run for real with 2 local gloo processes (compared with local SGD written out
in one process with plain torch)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from distsched.data import ShardBatches, digits, iid_shards
from distsched.report import read_metrics
from distsched.train.checkpoint import checkpoint_name, load_rank_state

LAUNCH = Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted([*LAUNCH.glob("*.sh"), *LAUNCH.glob("*.sbatch")])
STEPS = 60
CFG = {
    "name": "tr",
    "seed": 1,
    "workers": 2,
    "steps": STEPS,
    "batch_size": 16,
    "log_every": 10,
    "model": {"name": "mlp", "hidden": [16]},
    "data": {"name": "digits"},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS},
    "sync": {"rule": "fixed", "h": 4},
    "checkpoint": {"every": 20, "keep": 1},
}


def test_expected_launch_files_exist():
    names = {p.name for p in LAUNCH.iterdir()}
    assert {"torchrun.sh", "slurm_torchrun.sbatch", "slurm_ray.sbatch", "ray_cluster.yaml", "nccl.env",
            "testbed.sh", "netperf.py"} <= names


@pytest.fixture(scope="module")
def shellcheck() -> str:
    """shellcheck, installed from Debian's packages when missing (as root with apt-get), else a skip
    that says why."""
    found = shutil.which("shellcheck")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "shellcheck"]
        if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
            subprocess.run(install, capture_output=True, env=env, timeout=600)
        found = shutil.which("shellcheck")
    if found is None:
        pytest.skip("shellcheck is not installed and could not be installed (needs root and apt-get)")
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_clean(script, shellcheck):
    proc = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_ray_cluster_yaml_matches_rays_schema():
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((LAUNCH / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert any("distsched" in c for c in config["setup_commands"])


def test_nccl_env_sets_documented_variables():
    text = (LAUNCH / "nccl.env").read_text()
    wanted = ["NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_DEBUG", "TORCH_NCCL_ASYNC_ERROR_HANDLING"]
    lines = text.splitlines()
    for var in wanted:
        (i,) = [k for k, ln in enumerate(lines) if ln.startswith(f"{var}=")]
        assert lines[i - 1].startswith("#"), f"{var} has no comment above it"
    out = subprocess.run(["bash", "-c", f"set -a; source {LAUNCH / 'nccl.env'}; env"], capture_output=True,
                         text=True, check=True, env={"PATH": os.environ["PATH"]}).stdout
    env = dict(ln.split("=", 1) for ln in out.splitlines() if "=" in ln)
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert all(var in env for var in wanted)


def _free_port() -> int:
    from distsched.sync import free_port

    return free_port()


def test_torchrun_launcher_two_gloo_processes(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(CFG))
    run_dir = tmp_path / "torchrun_run"
    env = {**os.environ, "PYTHON": sys.executable, "NPROC_PER_NODE": "2", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(LAUNCH / "torchrun.sh"), str(cfg_path), str(run_dir)], capture_output=True,
                          text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"step {STEPS}/{STEPS}" in proc.stdout  # rank 0's progress lines
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["steps_done"] == STEPS
    assert summary["sync_rounds"] == STEPS // 4  # FixedH(4): one all_reduce every 4 steps

    # reference: the same local SGD written out in one process with plain torch (two model copies,
    # torch's SGD and CosineAnnealingLR, parameters averaged after every 4th step)
    ref_models, ref_losses = _local_sgd_reference()
    final = checkpoint_name(STEPS)
    for rank in (0, 1):
        ours = load_rank_state(run_dir / "checkpoints" / final, rank)["model"]
        for name, p in ref_models[rank].state_dict().items():
            torch.testing.assert_close(ours[name], p, rtol=1e-5, atol=1e-6)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(10, STEPS + 1, 10))
    for r in records:  # the loss of each 10-step window, averaged over both workers
        assert r["loss"] == pytest.approx(ref_losses[r["step"] // 10 - 1], rel=1e-5)


def _local_sgd_reference() -> tuple[list[nn.Module], list[float]]:
    data = digits(0.2, CFG["seed"])
    x, y = data.train.tensors
    shards = iid_shards(len(y), 2, CFG["seed"])
    batches = [iter(ShardBatches(shards[k], 16, CFG["seed"], k)) for k in range(2)]
    torch.manual_seed(CFG["seed"])
    first = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    models = [first, copy.deepcopy(first)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in models]
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS) for o in opts]
    window, losses = 0.0, []
    for t in range(STEPS):
        for k in range(2):
            idx = next(batches[k])
            opts[k].zero_grad()
            loss = nn.functional.cross_entropy(models[k](x[idx]), y[idx])
            loss.backward()
            opts[k].step()
            scheds[k].step()
            window += float(loss.detach())
        if (t + 1) % 4 == 0:
            with torch.no_grad():
                for p0, p1 in zip(models[0].parameters(), models[1].parameters()):
                    mean = (p0 + p1) / 2
                    p0.copy_(mean)
                    p1.copy_(mean)
        if (t + 1) % 10 == 0:
            losses.append(window / 20)
            window = 0.0
    return models, losses


def _torchrun_sh(cfg: dict, tmp_path: Path, run_dir: Path) -> subprocess.CompletedProcess:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHON": sys.executable, "NPROC_PER_NODE": "2", "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(LAUNCH / "torchrun.sh"), str(cfg_path), str(run_dir)], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.mark.parametrize("mistake", ["run_dir_holds_a_run", "batch_above_the_shards"])
def test_torchrun_launcher_refuses_a_users_mistake_in_one_line_before_torchrun(tmp_path, mistake):
    """The driver's checks run before torchrun starts: one line on stderr, exit 2, nothing written
    (inside torchrun's workers the same mistake ended in torchrun's ChildFailedError traceback, exit 1)."""
    run_dir = tmp_path / "run"
    cfg = {**copy.deepcopy(CFG), "sync": {"name": "fixed", "h": 4}}
    if mistake == "run_dir_holds_a_run":
        run_dir.mkdir()
        (run_dir / "config.yaml").write_text("name: an earlier run\n")
    else:
        cfg["batch_size"] = 5000  # above each worker's ~700 digits
    proc = _torchrun_sh(cfg, tmp_path, run_dir)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("distsched train: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    if mistake == "run_dir_holds_a_run":
        assert "already holds a run" in lines[0]
        assert (run_dir / "config.yaml").read_text() == "name: an earlier run\n"  # unchanged
        assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    else:
        assert not run_dir.exists()


def test_under_torchrun_itself_rank_0_refuses_in_one_line_and_the_other_ranks_stop_quietly(tmp_path):
    """torchrun run directly (not launch/torchrun.sh): rank 0's checks refuse a --resume of a folder that
    holds no run; rank 0 writes the one line, rank 1 exits without a traceback (was: rank 1's traceback of
    the broken broadcast). torchrun's own report of the failed workers (exit 1) is torchrun's."""
    run_dir = tmp_path / "not_a_run"
    run_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d",
                           f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--local-addr=127.0.0.1",
                           "-m", "distsched", "train", "--launcher", "torchrun", "--resume", str(run_dir)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    ours = [ln for ln in proc.stderr.splitlines() if "distsched train: error: " in ln]
    assert len(ours) == 1, proc.stderr
    assert "[rank1]" not in proc.stderr and "[rank0]" not in proc.stderr, proc.stderr  # no worker traceback
    assert "exitcode: 2" in proc.stderr  # torchrun's report: the workers exited with the CLI's code 2
    assert list(run_dir.iterdir()) == []  # nothing written
