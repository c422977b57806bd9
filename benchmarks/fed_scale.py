"""Federated simulation at scale: set-up time, peak memory and round time against the number of
registered clients (issue 15, item 1), in this process (``--executor local``) or on Ray actors
(``--executor ray``).

Workload: LEAF-style synthetic(0.5, 0.5) (:func:`distsched.data.leaf_synthetic`, dim 60, 10 classes,
about ``--mean-samples`` samples per client, natural split: one client per LEAF client), MLP 60-32-10,
``--cohort`` clients per round (fixed cohort, 10% dropout drawn for the cohort), 1 local epoch,
batch 10, the cohort cut into ``--actors`` chunks. For each registered count and executor, a fresh
process (so that its memory is its own):

* ``data_s``: building the data set (linear in samples: ``K * 10 * 60`` + ``n * 60`` normal draws);
* ``setup_s``: ``Simulation(config, data=...)``: partition (CSR, one argsort), partition statistics
  (one bincount), sampler, model;
* ``ray_s``: starting the embedded Ray cluster (``ray`` only; token auth on, object store sized by
  :func:`distsched.cluster.executor.object_store_bytes`);
* ``worker_s``: building the executor: its :class:`~distsched.federated.ClientWorker` objects (``ray``: the
  arrays put in the object store once, ``--actors`` actors reading them there);
* ``round_s``: median over ``--rounds`` rounds of the simulation's own round (``plan_round``: cohort
  draw and chunks; the executor trains them; ``combine``; the server step);
* ``driver_rss_mib``: the driver's peak resident set; ``actor_rss_mib``: each actor's (``ray``; it
  counts the object-store pages the actor maps, which every actor shares);
* ``peak_total_mib``: the peak, sampled every 0.5 s, of the proportional set size (PSS: a shared page
  counted once in all) summed over this process and all its descendants: for ``ray`` the driver,
  GCS, raylet with its object store, the actors and the other Ray workers. The memory the run takes.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fed_scale.py                         # 10k, 100k, 1M, local and ray
    PYTHONPATH=$PWD .venv/bin/python benchmarks/fed_scale.py --clients 10000 --executor ray  # one row
Writes benchmarks/results/fed_scale.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
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


def lm_config(cohort: int, rounds: int) -> dict:
    """The natural clients of the language-model corpus (``examples/fed_lm.yaml``'s workload, FedAvg):
    stdlib_text, context 32, one client per top-level module or package of the standard library;
    2-layer GPT (dim 64), 8 local SGD steps of batch 8 per client."""
    return {
        "name": "bench_fed_scale_lm",
        "seed": 0,
        "rounds": rounds,
        "data": {"name": "stdlib_text", "params": {"context": 32, "val_windows": 256}},
        "partition": {"scheme": "natural"},
        "model": {"name": "gpt", "kwargs": {"layers": 2, "heads": 4, "dim": 64}},
        "client": {"lr": 0.3, "batch_size": 8, "local_unit": "steps", "local_work": 8},
        "sampling": {"cohort_size": cohort},
        "strategy": {"name": "fedavg", "server_lr": 1.0},
    }


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pss_kib(root: int) -> int:
    """Proportional set size (KiB) summed over ``root`` and its descendants (Linux ``smaps_rollup``)."""
    kids, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


class PeakTreeMemory:
    """Samples :func:`tree_pss_kib` of this process every ``every`` seconds; ``peak_kib`` the maximum."""

    def __init__(self, every: float = 0.5) -> None:
        self.peak_kib, self._every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, tree_pss_kib(os.getpid()))
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, tree_pss_kib(os.getpid()))
        return self.peak_kib


def one(num_clients: int, cohort: int, mean_samples: float, rounds: int, executor: str, actors: int,
        dataset: str = "synthetic") -> dict:
    """Measure one registered count on one executor in this process (``dataset="stdlib_text"``: the
    corpus's natural clients, whatever ``num_clients``; the cohort is at most all of them)."""
    import numpy as np
    import torch

    from distsched.data import load_arrays
    from distsched.federated import InProcessExecutor, Simulation, fed_config

    torch.set_num_threads(1)
    memory = PeakTreeMemory()
    cfg = config(num_clients, cohort, mean_samples, rounds) if dataset == "synthetic" else lm_config(cohort, rounds)
    cfg["num_actors"] = actors
    t0 = time.perf_counter()
    data = load_arrays(dataset, cfg["data"]["params"], seed=0)
    t1 = time.perf_counter()
    if dataset != "synthetic":
        num_clients = len(data.natural_partition.offsets) - 1
        cohort = cfg["sampling"]["cohort_size"] = min(cohort, num_clients)
    sim = Simulation(fed_config(cfg), data=data)
    t2 = time.perf_counter()
    setup = sim.worker_setup()
    if executor == "ray":
        from distsched.cluster import connect, ray_executor
        from distsched.cluster.executor import object_store_bytes

        connect(num_cpus=actors, object_store_bytes=object_store_bytes(setup))
    t3 = time.perf_counter()
    pool = ray_executor()(setup, actors) if executor == "ray" else InProcessExecutor(setup, actors)
    t4 = time.perf_counter()
    sim.num_actors = pool.size  # as Simulation.run sets it: one chunk per worker
    times = []
    for r in range(rounds):
        s = time.perf_counter()
        tasks, _ = sim.plan_round(r)
        delta, _ = sim.combine(r, pool.run(tasks, sim.params.numpy()))
        sim.params = sim.strategy.step(sim.params, torch.from_numpy(delta).float(), 1.0)
        times.append(time.perf_counter() - s)
    actor_rss = [round(k / 1024, 1) for k in pool.max_rss_kib()]
    pool.close()
    peak = memory.stop()
    digest = float(np.abs(sim.params.numpy().astype(np.float64)).sum())
    return {
        "data": dataset,
        "executor": executor,
        "actors": actors,
        "registered_clients": num_clients,
        "train_samples": int(len(data.y_train)),
        "train_mib": round((data.x_train.nbytes + data.y_train.nbytes) / 2**20, 1),
        "cohort": cohort,
        "data_s": round(t1 - t0, 2),
        "setup_s": round(t2 - t1, 2),
        "ray_s": round(t3 - t2, 2),
        "worker_s": round(t4 - t3, 2),
        "round_s": round(float(np.median(times)), 3),
        "round_s_all": [round(t, 3) for t in times],
        "driver_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "actor_rss_mib": actor_rss,
        "peak_total_mib": round(peak / 1024, 1),
        "params_abs_sum": digest,  # equal across executors: same rounds, bit for bit
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--data", choices=("synthetic", "stdlib_text"), default="synthetic",
                    help="stdlib_text: the language-model corpus's natural clients (one row; --clients ignored)")
    ap.add_argument("--executor", nargs="+", choices=("local", "ray"), default=["local", "ray"])
    ap.add_argument("--actors", type=int, default=2, help="Ray actors (and chunks per round for both executors)")
    ap.add_argument("--cohort", type=int, default=1000)
    ap.add_argument("--mean-samples", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fed_scale.json"))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.clients[0], a.cohort, a.mean_samples, a.rounds, a.executor[0], a.actors, a.data)))
        return
    rows = []
    load_before = os.getloadavg()
    for k in a.clients if a.data == "synthetic" else a.clients[:1]:
        for ex in a.executor:
            cmd = [sys.executable, __file__, "--one", "--clients", str(k), "--cohort", str(min(a.cohort, k)),
                   "--mean-samples", str(a.mean_samples), "--rounds", str(a.rounds), "--executor", ex,
                   "--actors", str(a.actors), "--data", a.data]
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if out.returncode != 0:  # e.g. Ray's node start timing out on an overloaded machine: say so, go on
                print(f"{k} clients, {ex}: exit {out.returncode}\n{out.stderr[-2000:]}", file=sys.stderr, flush=True)
                continue
            rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "loadavg_after": os.getloadavg()})
            print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = {"rows": rows, "loadavg_before": load_before, "loadavg": load, "cpus": os.cpu_count(), "date": date,
              "command": " ".join(["benchmarks/fed_scale.py", *sys.argv[1:]])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print("\n| data | registered clients | executor | train samples | data build s | set-up s | Ray start s "
          "| workers s | round s (cohort) | driver peak RSS MiB | actor peak RSS MiB | peak total PSS MiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        actors = ", ".join(f"{m:,.0f}" for m in r["actor_rss_mib"]) or "-"
        print(f"| {r['data']} | {r['registered_clients']:,} | {r['executor']} | {r['train_samples']:,} "
              f"| {r['data_s']} | {r['setup_s']} | {r['ray_s'] if r['executor'] == 'ray' else '-'} | {r['worker_s']} "
              f"| {r['round_s']} ({r['cohort']:,}) | {r['driver_rss_mib']:,.0f} | {actors} "
              f"| {r['peak_total_mib']:,.0f} |")
    print(f"\nload average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
