"""FedBuff (buffered asynchronous aggregation) vs synchronous FedAvg with stragglers, in simulated time
(issue 15, item 4).

Workload: FED-DIGITS (``examples/fed_digits.yaml``: 100 Dirichlet(0.5) clients, MLP 64-128-10, 1 local
epoch, batch 10, client lr 0.05) with log-normal client speeds (``--speed-sigma``, per client) and a
per-launch jitter (sigma 0.3): a client doing ``s`` local steps takes ``s / speed * jitter`` time units.
Every run trains the same number of client updates (``--updates``):

* ``fedavg``: synchronous, cohort 20; a round lasts as long as its slowest client;
* ``fedavg_deadline``: synchronous, cohort 20, updates later than ``--deadline`` dropped (the round lasts
  until the deadline when one is late);
* ``fedbuff``: 20 clients in flight, server step every 10 arrivals, weights ``1/sqrt(1 + tau)``
  (``examples/fed_digits_fedbuff.yaml``);
* ``fedbuff_lr``: the same with the server LR scaled by ``(1 + mean tau)^-1/2``.

For each: final test accuracy, simulated time of the whole run, and the simulated time at which test
accuracy first reached ``--target`` (evaluated every 2 server steps / every round), per seed, and medians.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fed_async.py --seeds 0 1 2
Writes benchmarks/results/fed_async.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def configs(speed_sigma: float, deadline: float, updates: int) -> dict[str, dict]:
    base = yaml.safe_load((ROOT / "examples" / "fed_digits.yaml").read_text())
    sampling = {"cohort_size": 20, "speed_sigma": speed_sigma, "jitter_sigma": 0.3}
    buff = yaml.safe_load((ROOT / "examples" / "fed_digits_fedbuff.yaml").read_text())
    steps = updates // buff["strategy"]["params"]["buffer_size"]
    with_lr = {**buff["strategy"], "params": {**buff["strategy"]["params"], "lr_staleness_exponent": 0.5}}
    return {
        "fedavg": {**base, "rounds": updates // 20, "sampling": sampling},
        "fedavg_deadline": {**base, "rounds": updates // 20,
                            "sampling": {**sampling, "deadline": deadline, "late_policy": "drop"}},
        "fedbuff": {**buff, "rounds": steps, "eval_every": 2, "sampling": sampling},
        "fedbuff_lr": {**buff, "rounds": steps, "eval_every": 2, "sampling": sampling, "strategy": with_lr},
    }


def run_one(cfg: dict, target: float) -> dict:
    from distsched.federated import Simulation

    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg)
        t0 = time.perf_counter()
        summary = sim.run(out_dir=tmp, progress=False, plots=False)
        wall = time.perf_counter() - t0
    reached = [h.sim_time for h in sim.history if h.test_acc is not None and h.test_acc >= target]
    return {
        "final_test_acc": summary["final_test_acc"],
        "client_updates": summary["client_updates"],
        "sim_time": sim.sim_time,
        "time_to_target": reached[0] if reached else None,
        "mean_staleness": statistics.fmean([h.staleness_mean for h in sim.history])
        if sim.history[0].staleness_mean is not None else None,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speed-sigma", type=float, default=1.0)
    parser.add_argument("--deadline", type=float, default=8.0, help="time units (one local step at speed 1)")
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fed_async.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results: dict[str, list[dict]] = {}
    for name, cfg in configs(args.speed_sigma, args.deadline, args.updates).items():
        for seed in args.seeds:
            res = run_one({**cfg, "name": name, "seed": seed}, args.target)
            results.setdefault(name, []).append({"seed": seed, **res})
            print(name, seed, json.dumps(res), flush=True)
    load = os.getloadavg()
    out = {"args": vars(args), "load_avg": load, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))

    def med(rows: list[dict], key: str) -> str:
        vals = [r[key] for r in rows if r[key] is not None]
        return f"{statistics.median(vals):.3g} ({len(vals)}/{len(rows)})" if vals else f"- (0/{len(rows)})"

    print(f"\n{args.updates} client updates, speed sigma {args.speed_sigma}, seeds {args.seeds}, "
          f"load {load[0]:.1f}; medians (seeds counted)\n")
    print(f"| run | final test acc | simulated time | time to {args.target:.0%} | mean staleness |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {med(rows, 'final_test_acc')} | {med(rows, 'sim_time')} | "
              f"{med(rows, 'time_to_target')} | {med(rows, 'mean_staleness')} |")


if __name__ == "__main__":
    main()
