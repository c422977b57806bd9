"""Time lost per resize of an elastic run (``workers: [1, 2]``, distsched/cluster/elastic.py).

Two runs of the same config on one fresh embedded cluster (2 CPUs, 127.0.0.1), one after the other:

- **fixed**: ``workers: 2``, uninterrupted (the peer);
- **elastic**: ``workers: [1, 2]``; rank 1 kills itself (SIGKILL) before step ``--kill-at`` while a Ray actor
  of another user takes the CPU it leaves; the actor is removed when the 1-worker group starts, so the
  group grows back to 2 after its next checkpoint.

Printed: each resize's ``restart_s`` (end of the old group, as the driver saw it, to the new group's rank 0
starting its loop), the steps redone after the loss, and ``(elastic launch - fixed launch) / resizes``:
the wall-clock each resize cost the run, all included (detection, teardown, restart, redone steps,
and the slower steps at 1 worker).

    .venv/bin/python benchmarks/elastic_resize.py [--steps 400] [--every 20] [--kill-at 150]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _config(steps: int, every: int, workers: object) -> dict:
    return {
        "name": "bench_elastic", "seed": 0, "workers": workers, "steps": steps, "batch_size": 32, "log_every": 10,
        "world_lr": "linear", "model": {"name": "mlp", "hidden": [128]}, "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "schedule": {"name": "cosine", "lr": 0.1, "total_steps": steps, "min_lr": 0.001},
        "sync": {"name": "qsr", "h_base": 2, "alpha": 0.1414, "h_max": 32},
        "checkpoint": {"every": every, "keep": 2},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=20, help="checkpoint.every")
    parser.add_argument("--kill-at", type=int, default=150)
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as distsched sets it, before Ray starts

    import ray

    from distsched.cluster import connect, train_on_ray
    from distsched.cluster.elastic import train_elastic
    from distsched.train import FaultInjection, config_from_mapping, prepare_run

    connect(num_cpus=2)

    @ray.remote(num_cpus=1)
    class Tenant:
        def pid(self) -> int:
            return os.getpid()

    held: dict = {"hook_s": 0.0}

    def on_event(kind: str, info: dict) -> None:  # the other user's actor: its start-up is not the run's cost
        t = time.perf_counter()
        if kind == "ended" and info["cause"] == "lost":
            held["tenant"] = Tenant.remote()
            ray.get(held["tenant"].pid.remote())
        elif kind == "starting" and "tenant" in held:
            ray.kill(held.pop("tenant"))
        held["hook_s"] += time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="distsched-elastic-bench-") as tmp:
        folder, cfg = prepare_run(config_from_mapping(_config(args.steps, args.every, 2)), run_dir=Path(tmp) / "fixed",
                                  exclusive=True)
        fixed = train_on_ray(cfg, folder, progress=False)
        folder, cfg = prepare_run(config_from_mapping(_config(args.steps, args.every, [1, 2])),
                                  run_dir=Path(tmp) / "elastic", exclusive=True)
        elastic = train_elastic(cfg, folder, progress=False, on_event=on_event,
                                fault=FaultInjection(rank=1, step=args.kill_at, marker=str(Path(tmp) / "killed")))
    resizes = elastic["resizes"]
    launch = elastic["launch_wall_time_s"] - held["hook_s"]
    per_resize = (launch - fixed["launch_wall_time_s"]) / max(len(resizes), 1)
    out = {
        "steps": args.steps, "checkpoint_every": args.every, "kill_at": args.kill_at,
        "fixed_launch_s": fixed["launch_wall_time_s"], "elastic_launch_s": elastic["launch_wall_time_s"],
        "segments": elastic["segments"], "resizes": resizes,
        "steps_redone_after_loss": args.kill_at - resizes[0]["step"] if resizes else None,
        "elastic_launch_without_the_other_user_s": round(launch, 3),
        "lost_per_resize_s": round(per_resize, 3),
        "elastic_over_fixed": round(launch / fixed["launch_wall_time_s"], 3),
        "fixed_test_accuracy": fixed.get("test_accuracy"), "elastic_test_accuracy": elastic.get("test_accuracy"),
        "load": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
