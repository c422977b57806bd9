"""Federated simulation at scale: set-up time, peak memory and round time against the number of
registered clients (issue 15, item 1).

Workload: LEAF-style synthetic(0.5, 0.5) (:func:`distsched.data.leaf_synthetic`, dim 60, 10 classes,
about ``--mean-samples`` samples per client, natural split: one client per LEAF client), MLP 60-32-10,
``--cohort`` clients per round (fixed cohort, 10% dropout drawn for the cohort), 1 local epoch,
batch 10. For each registered count, a fresh process (so that its peak RSS is its own):

* ``data_s``: building the data set (linear in samples: ``K * 10 * 60`` + ``n * 60`` normal draws);
* ``setup_s``: ``Simulation(config, data=...)``: partition (CSR, one argsort), partition statistics
  (one bincount), sampler, model;
* ``worker_s``: constructing the :class:`~distsched.federated.ClientWorker` the actors run, in-process
  (it holds the train arrays and the CSR index);
* ``round_s``: median over ``--rounds`` rounds of drawing the cohort and training it on that worker
  (one worker: the round time a single actor spends, the quantity that must not grow with ``K``);
* ``peak_rss_mib``: the process's peak resident set (driver and worker are the same process).

Ray is not started: the figures are the driver's and one worker's work; a Ray actor holds the same
arrays (its own copy), so with ``A`` actors add ``A - 1`` copies of ``train_mib``.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fed_scale.py                 # 10k, 100k, 1M
    PYTHONPATH=$PWD .venv/bin/python benchmarks/fed_scale.py --clients 10000  # one row
Writes benchmarks/results/fed_scale.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def config(num_clients: int, cohort: int, mean_samples: float, rounds: int) -> dict:
    return {
        "name": "bench_fed_scale",
        "seed": 0,
        "rounds": rounds,
        "data": {"name": "synthetic", "params": {"alpha": 0.5, "beta": 0.5, "num_clients": num_clients,
                                                  "mean_samples": mean_samples}},
        "partition": {"scheme": "natural", "num_clients": num_clients},
        "model": {"hidden": [32]},
        "client": {"lr": 0.05, "batch_size": 10, "local_unit": "epochs", "local_work": 1},
        "sampling": {"cohort_size": cohort, "dropout": 0.1},
        "strategy": {"name": "fedavg", "server_lr": 1.0},
    }


def one(num_clients: int, cohort: int, mean_samples: float, rounds: int) -> dict:
    """Measure one registered count in this process."""
    import numpy as np
    import torch

    from distsched.data import load_arrays
    from distsched.federated import ChunkTask, ClientWorker, Simulation, fed_config, to_csr

    torch.set_num_threads(1)
    cfg = config(num_clients, cohort, mean_samples, rounds)
    t0 = time.perf_counter()
    data = load_arrays("synthetic", cfg["data"]["params"], seed=0)
    t1 = time.perf_counter()
    sim = Simulation(fed_config(cfg), data=data)
    t2 = time.perf_counter()
    order, offsets = to_csr(sim.parts)
    worker = ClientWorker(data.x_train, data.y_train, order, offsets, sim.model_spec, sim.local_work, 0)
    t3 = time.perf_counter()
    params = sim.params.numpy()
    times = []
    for r in range(rounds):
        s = time.perf_counter()
        clients = sim.sampler.sample(r).participants
        task = ChunkTask(round=r, clients=clients, weight_scale=np.ones(len(clients)), lr=0.05, work=1, batch_size=10)
        res = worker.run(task, params)
        params = params + (res.update_sum / res.weight_sum).astype(np.float32)
        times.append(time.perf_counter() - s)
    return {
        "registered_clients": num_clients,
        "train_samples": int(len(data.y_train)),
        "train_mib": round((data.x_train.nbytes + data.y_train.nbytes) / 2**20, 1),
        "cohort": cohort,
        "data_s": round(t1 - t0, 2),
        "setup_s": round(t2 - t1, 2),
        "worker_s": round(t3 - t2, 2),
        "round_s": round(float(np.median(times)), 3),
        "round_s_all": [round(t, 3) for t in times],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--mean-samples", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fed_scale.json"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.clients[0], a.cohort, a.mean_samples, a.rounds)))
        return
    rows = []
    for k in a.clients:
        cmd = [sys.executable, __file__, "--one", "--clients", str(k), "--cohort", str(min(a.cohort, k)),
               "--mean-samples", str(a.mean_samples), "--rounds", str(a.rounds)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ.copy())
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = {"rows": rows, "loadavg": load, "cpus": os.cpu_count(), "date": date}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("\n| registered clients | train samples | data build s | Simulation set-up s | worker s "
          f"| round s ({a.cohort:,} clients) | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['registered_clients']:,} | {r['train_samples']:,} | {r['data_s']} | {r['setup_s']} "
              f"| {r['worker_s']} | {r['round_s']} | {r['peak_rss_mib']:,} |")
    print(f"\nload average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
