"""FED-DIGITS: distsched's actor-pool simulator against Flower's Ray simulation, in one command.

Workload (both frameworks, same data split, same partition, same initial model): sklearn digits scaled
to [0, 1], 297 test / 1500 train (seed 0), 100 clients by Dirichlet(0.5) over labels, MLP 64-128-10,
FedAvg, 20 clients per round, 30 rounds, 1 local epoch, batch 10, SGD lr 0.05, 2 CPUs, centralized
test evaluation every round. Reported: end-to-end time (Ray start included), steady-state client
updates per second (rounds 2..30, wall clock between the ends of round 1 and round 30; cluster start
and the first round excluded), final test accuracy. Then a scale run of distsched: 10,000 clients
(LEAF-style synthetic(0.5, 0.5), natural split), 100 per round, with peak memory.

Flower runs in its own virtual environment (``flwr[simulation]`` pins ``ray==2.55.1`` while distsched
uses a newer Ray), as a subprocess of this script:

    .venv/bin/python benchmarks/fed_vs_flower.py --setup-flower   # once: creates .venv/flower
    .venv/bin/python benchmarks/fed_vs_flower.py                  # writes benchmarks/results/fed_vs_flower.json
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

FED_DIGITS = {
    "name": "bench_fed_digits",
    "seed": 0,
    "rounds": 30,
    "data": {"name": "digits", "params": {"test_size": 297}},
    "partition": {"scheme": "dirichlet", "num_clients": 100, "alpha": 0.5},
    "model": {"hidden": [128]},
    "client": {"lr": 0.05, "batch_size": 10, "local_unit": "epochs", "local_work": 1},
    "sampling": {"cohort_size": 20},
    "strategy": {"name": "fedavg", "server_lr": 1.0},
    "eval_every": 1,
    "checkpoint_every": 1000,
}

SCALE = {
    **FED_DIGITS,
    "name": "bench_scale",
    "rounds": 20,
    "data": {"name": "synthetic", "params": {"alpha": 0.5, "beta": 0.5, "num_clients": 10_000, "mean_samples": 20}},
    "partition": {"scheme": "natural", "num_clients": 10_000},
    "sampling": {"cohort_size": 100},
    "eval_every": 5,
}


# ---------------------------------------------------------------------------------------------
# distsched side (runs in distsched's environment)
# ---------------------------------------------------------------------------------------------
def run_distsched(config: dict, out: Path, export: Path | None = None) -> dict:
    import ray

    from distsched.cluster import connect
    from distsched.federated import Simulation, to_csr

    sim = Simulation(config)
    if export is not None:
        import numpy as np

        order, offsets = to_csr(sim.parts)
        np.savez(
            export,
            x_train=sim.data.x_train,
            y_train=sim.data.y_train,
            x_test=sim.data.x_test,
            y_test=sim.data.y_test,
            order=order,
            offsets=offsets,
            init=sim.params.numpy(),
        )
    t0 = time.perf_counter()
    connect(num_cpus=2)
    summary = sim.run(out_dir=out, progress=False)
    ray.shutdown()
    accs = [h.test_acc for h in sim.history if h.test_acc is not None]
    summary["last5_test_acc"] = sum(accs[-5:]) / len(accs[-5:]) if accs else None
    summary["end_to_end_s"] = time.perf_counter() - t0
    return summary


# ---------------------------------------------------------------------------------------------
# Flower side (runs in Flower's environment; imports nothing from distsched)
# ---------------------------------------------------------------------------------------------
def run_flower(data_path: str, rounds: int, cohort: int, num_clients: int, seed: int) -> dict:
    import random

    import numpy as np
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch import nn
    from torch.nn import functional as F

    random.seed(seed)  # Flower's client manager samples cohorts with `random`
    np.random.seed(seed)
    torch.manual_seed(seed)
    d = np.load(data_path)
    x_train, y_train = torch.as_tensor(d["x_train"]), torch.as_tensor(d["y_train"])
    x_test, y_test = torch.as_tensor(d["x_test"]), torch.as_tensor(d["y_test"])
    order, offsets, init = d["order"], d["offsets"], d["init"]

    def make_model() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(x_train.shape[1], 128), nn.ReLU(), nn.Linear(128, 10))

    def to_arrays(model: nn.Module) -> list[np.ndarray]:
        return [p.detach().numpy().copy() for p in model.parameters()]

    def load(model: nn.Module, arrays: list[np.ndarray]) -> None:
        with torch.no_grad():
            for p, a in zip(model.parameters(), arrays):
                p.copy_(torch.as_tensor(a))

    template = make_model()
    torch.nn.utils.vector_to_parameters(torch.as_tensor(init), template.parameters())
    init_arrays = to_arrays(template)

    class DigitsClient(NumPyClient):
        def __init__(self, cid: int) -> None:
            torch.set_num_threads(1)
            self.idx = torch.as_tensor(order[offsets[cid] : offsets[cid + 1]])
            self.model = make_model()

        def fit(self, parameters, config):
            load(self.model, parameters)
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
            x, y = x_train[self.idx], y_train[self.idx]
            for batch in torch.randperm(len(y)).split(10):  # 1 local epoch, batch 10
                opt.zero_grad()
                F.cross_entropy(self.model(x[batch]), y[batch]).backward()
                opt.step()
            return to_arrays(self.model), len(y), {}

    def client_fn(context: Context):
        return DigitsClient(int(context.node_config["partition-id"])).to_client()

    ends: list[float] = []
    accs: list[float] = []
    final: dict = {}
    eval_model = make_model()

    def evaluate_fn(server_round, arrays, config):
        load(eval_model, arrays)
        with torch.no_grad():
            logits = eval_model(x_test)
            loss = float(F.cross_entropy(logits, y_test))
            acc = float((logits.argmax(1) == y_test).float().mean())
        if server_round > 0:
            ends.append(time.perf_counter())
            accs.append(acc)
            final.update(acc=acc, loss=loss, round=server_round)
        return loss, {"accuracy": acc}

    def server_fn(context: Context):
        strategy = FedAvg(
            fraction_fit=cohort / num_clients,
            min_fit_clients=cohort,
            min_available_clients=num_clients,
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            evaluate_fn=evaluate_fn,
            initial_parameters=ndarrays_to_parameters(init_arrays),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    backend = {
        "init_args": {"num_cpus": 2, "include_dashboard": False, "_node_ip_address": "127.0.0.1"},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    t0 = time.perf_counter()
    run_simulation(ServerApp(server_fn=server_fn), ClientApp(client_fn=client_fn), num_clients, backend_config=backend)
    total = time.perf_counter() - t0
    steady = (len(ends) - 1) * cohort / (ends[-1] - ends[0]) if len(ends) > 1 else None
    return {
        "rounds": len(ends),
        "final_test_acc": final.get("acc"),
        "final_test_loss": final.get("loss"),
        "last5_test_acc": sum(accs[-5:]) / len(accs[-5:]) if accs else None,
        "end_to_end_s": total,
        "steady_updates_per_s": steady,
        "client_updates": len(ends) * cohort,
    }


def flower_subprocess(python: str, data: Path, rounds: int, cohort: int, clients: int, seed: int, timeout: int) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [python, __file__, "--flower-worker", str(data), str(rounds), str(cohort), str(clients), str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        return {"error": f"exit {out.returncode}", "stderr_tail": out.stderr[-3000:]}
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("FLOWER_RESULT ")][-1]
    return json.loads(line[len("FLOWER_RESULT ") :])


def setup_flower(env: Path) -> None:
    """A separate virtual environment for Flower: ``flwr[simulation]`` pins its own Ray."""
    if not (env / "bin" / "python").exists():
        subprocess.run(["python3", "-m", "venv", str(env)], check=True)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0", "flwr[simulation]>=1.10", "scikit-learn"], check=True)


def _aggregate(runs: list[dict]) -> dict:
    """Median time and throughput, mean accuracy over repetitions (and every run)."""
    import statistics

    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"runs": runs}
    return {
        "end_to_end_s_median": statistics.median(r["end_to_end_s"] for r in ok),
        "steady_updates_per_s_median": statistics.median(r["steady_updates_per_s"] for r in ok),
        "final_test_acc_mean": statistics.fmean(r["final_test_acc"] for r in ok),
        "final_test_acc_std": statistics.pstdev(r["final_test_acc"] for r in ok),
        "final_test_loss_mean": statistics.fmean(r["final_test_loss"] for r in ok),
        "last5_test_acc_mean": statistics.fmean(r["last5_test_acc"] for r in ok),
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flower-python", default=str(ROOT / ".venv" / "flower" / "bin" / "python"))
    parser.add_argument(
        "--setup-flower",
        action="store_true",
        help="create the Flower environment at .venv/flower (python3 -m venv; pip install torch, flwr[simulation])",
    )
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fed_vs_flower.json"))
    parser.add_argument("--repeats", type=int, default=3, help="FED-DIGITS runs per framework (seeds 0..n-1)")
    parser.add_argument("--flower-worker", nargs=5, metavar=("DATA", "ROUNDS", "COHORT", "CLIENTS", "SEED"))
    parser.add_argument("--scale-worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_worker:
        data, rounds, cohort, clients, seed = args.flower_worker
        result = run_flower(data, int(rounds), int(cohort), int(clients), int(seed))
        print("FLOWER_RESULT " + json.dumps(result), flush=True)
        return 0
    if args.scale_worker:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        result = run_distsched(SCALE, Path(args.scale_worker))
        print("SCALE_RESULT " + json.dumps(result), flush=True)
        return 0

    if args.setup_flower:
        setup_flower(Path(args.flower_python).parents[1])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    keep = (
        "end_to_end_s",
        "steady_updates_per_s",
        "final_test_acc",
        "last5_test_acc",
        "final_test_loss",
        "client_updates",
        "rounds",
    )
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": 2}
    with tempfile.TemporaryDirectory() as tmp:
        # repetition i: both frameworks get the same data split, partition and initial model (seed i);
        # cohorts and batch order are each framework's own.
        ours_runs, flower_runs = [], []
        for seed in range(args.repeats):
            data = Path(tmp) / f"fed_digits_{seed}.npz"
            ours = run_distsched({**FED_DIGITS, "seed": seed}, Path(tmp) / "runs", export=data)
            ours_runs.append({k: ours[k] for k in keep})
            print("distsched", seed, json.dumps(ours_runs[-1]), flush=True)
            if args.skip_flower:
                continue
            if not Path(args.flower_python).exists():
                flower_runs.append({"error": f"no Flower environment at {args.flower_python} (see the docstring)"})
            else:
                flower_runs.append(flower_subprocess(args.flower_python, data, 30, 20, 100, seed, timeout=480))
            print("flower", seed, json.dumps(flower_runs[-1]), flush=True)
        results["distsched"] = _aggregate(ours_runs)
        if flower_runs:
            results["flower"] = _aggregate(flower_runs)
            fl, us = results["flower"], results["distsched"]
            if fl.get("steady_updates_per_s_median"):
                results["speedup_steady"] = us["steady_updates_per_s_median"] / fl["steady_updates_per_s_median"]
                results["accuracy_gap_points"] = 100 * (us["final_test_acc_mean"] - fl["final_test_acc_mean"])
                results["last5_accuracy_gap_points"] = 100 * (us["last5_test_acc_mean"] - fl["last5_test_acc_mean"])
        if not args.skip_scale:
            # its own process, so that peak memory is the scale run's alone
            cmd = [sys.executable, __file__, "--scale-worker", str(Path(tmp) / "runs")]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=480, check=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("SCALE_RESULT ")][-1]
            scale = json.loads(line[len("SCALE_RESULT ") :])
            results["distsched_scale"] = {
                **{k: scale[k] for k in keep},
                "num_clients": scale["num_clients"],
                "cohort": 100,
                "driver_max_rss_mib": scale["driver_max_rss_mib"],
                "actor_max_rss_mib": scale["actor_max_rss_mib"],
                "peak_rss_mib_upper_bound": scale["peak_rss_mib_upper_bound"],
            }
            print("distsched_scale", json.dumps(results["distsched_scale"]), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
