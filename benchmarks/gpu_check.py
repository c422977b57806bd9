"""The prepared device check: the CUDA/NCCL path (world size 1) and DP-SGD on the GPU, in one run.

Meant for a session that is lent a GPU machine; prints one JSON object and writes it to ``--json``.
Each part runs the real CLI in a subprocess, so what is checked is exactly what a user runs:

1. ``distsched train examples/digits_qsr.yaml --launcher processes --workers 1``: local SGD with QSR;
   on a CUDA machine the backend is NCCL (``default_backend()``) and the model sits on ``cuda:0``.
2. the same through Ray Train (embedded cluster, 1 worker, ``use_gpu`` when the cluster has a GPU).
3. ``distsched train examples/digits_dp.yaml --launcher processes --workers 1``: DP-SGD (Opacus) on the
   GPU, planned to epsilon 4; the run must end with epsilon <= 4.
4. a timing of one flat NCCL all_reduce of a 25 MiB bucket (world size 1: the launch overhead).

``--allow-cpu`` runs the same steps on a machine without CUDA (gloo), to check the script itself.

    python benchmarks/gpu_check.py --json $OUT/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train(config: str, run_dir: Path, launcher: str) -> dict:
    cmd = [sys.executable, "-m", "distsched", "train", str(ROOT / config), "--workers", "1",
           "--launcher", launcher, "--run-dir", str(run_dir), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["command_wall_s"] = round(wall, 2)
    return summary


def _pick(summary: dict, *keys: str) -> dict:
    common = ("device", "backend", "test_accuracy", "wall_time_s", "command_wall_s")
    return {k: summary.get(k) for k in (*common, *keys)}


def _allreduce_timing(repeats: int = 50) -> dict:
    import torch
    import torch.distributed as dist

    from distsched.sync.backend import free_port, init_process_group

    backend = init_process_group(0, 1, f"tcp://127.0.0.1:{free_port()}")
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    bucket = torch.ones(25 * 2**20 // 4, device=device)
    for _ in range(5):
        dist.all_reduce(bucket)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(bucket)
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_call_us = (time.perf_counter() - t0) / repeats * 1e6
    dist.destroy_process_group()
    return {"backend": backend, "device": str(device), "bucket_mib": 25, "all_reduce_us": round(per_call_us, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    parser.add_argument("--allow-cpu", action="store_true", help="run on a machine without CUDA (gloo)")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device: this check is for a GPU machine (use --allow-cpu to test the script)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        qsr = _train("examples/digits_qsr.yaml", tmp_path / "qsr", "processes")
        report["local_sgd_processes"] = _pick(qsr, "final_loss", "sync_rounds", "bytes_sent")
        if not args.skip_ray:
            ray_run = _train("examples/digits_qsr.yaml", tmp_path / "qsr_ray", "ray")
            report["local_sgd_ray"] = _pick(ray_run, "sync_rounds")
        dp = _train("examples/digits_dp.yaml", tmp_path / "dp", "processes")
        report["dp_sgd_processes"] = _pick(dp, "epsilon", "steps_done", "stopped_by_budget")
        if dp.get("epsilon") is None or dp["epsilon"] > 4.0 + 1e-9:
            raise SystemExit(f"DP run ended at epsilon {dp.get('epsilon')}, over its budget of 4")
    report["all_reduce"] = _allreduce_timing()
    expected, backend = ("cuda", "nccl") if cuda else ("cpu", "gloo")
    for part in ("local_sgd_processes", "local_sgd_ray", "dp_sgd_processes"):
        if part not in report:
            continue
        if not str(report[part]["device"]).startswith(expected) or report[part]["backend"] != backend:
            raise SystemExit(f"{part} ran on {report[part]['device']} / {report[part]['backend']}, "
                             f"expected {expected} / {backend}")
    text = json.dumps(report, indent=2)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
