"""Cost of one checkpointing ``ray.train.report`` under Ray Train, by controller poll interval.

A report puts the result on a one-slot queue that Ray Train's controller empties once per poll
(``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, Ray's default 2 s), so a worker that reports again waits for
the next poll. distsched sets 0.2 s (``distsched.cluster.trainer.POLL_INTERVAL_S``). This measures the
seconds per report of 2 TorchTrainer workers making ``--reports`` checkpointing reports back to back
(a tiny file each), for each interval, each in a fresh embedded cluster (2 CPUs, 127.0.0.1).

    .venv/bin/python benchmarks/ray_train_report.py [--reports 10] [--intervals 2.0 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_CHILD = r"""
import json, os, sys, tempfile, time
import ray, ray.train
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from distsched.cluster import connect

n = int(sys.argv[1]); out = sys.argv[2]; storage = sys.argv[3]

def fn(config):
    times = []
    for i in range(config["n"]):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, f"r{ray.train.get_context().get_world_rank()}.txt"), "w") as fh:
                fh.write(str(i))
            t = time.perf_counter()
            ray.train.report({"i": i}, checkpoint=Checkpoint.from_directory(d), checkpoint_dir_name=f"c{i:04d}")
            times.append(time.perf_counter() - t)
    if ray.train.get_context().get_world_rank() == 0:
        with open(config["out"], "w") as fh:
            json.dump(times, fh)

connect(num_cpus=2)
TorchTrainer(fn, train_loop_config={"n": n, "out": out}, scaling_config=ScalingConfig(num_workers=2),
             run_config=RunConfig(name="bench", storage_path=storage)).fit()
ray.shutdown()
"""


def measure(interval: float, reports: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(interval), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", _CHILD, str(reports), out, os.path.join(tmp, "storage")],
                       env=env, check=True, capture_output=True, timeout=600)
        with open(out) as fh:
            times = json.load(fh)
    steady = sorted(times[1:])  # the first report also waits for the controller to start polling
    return {"interval_s": interval, "reports": reports, "median_s_per_report": steady[len(steady) // 2],
            "total_s": sum(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=10)
    parser.add_argument("--intervals", type=float, nargs="+", default=[2.0, 0.2])
    args = parser.parse_args()
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), f"load average {os.getloadavg()[0]:.1f}")
    for interval in args.intervals:
        r = measure(interval, args.reports)
        print(f"poll interval {r['interval_s']:>4} s: median {r['median_s_per_report']:.3f} s per report, "
              f"{r['reports']} reports in {r['total_s']:.2f} s")


if __name__ == "__main__":
    main()
