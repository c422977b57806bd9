"""FED-DIGITS: distsched's actor-pool simulator against Flower's Ray simulation, in one command.

Workload (both frameworks train the same thing): sklearn digits scaled to [0, 1], 297 test / 1500
train, 100 clients by Dirichlet(0.5) over labels, MLP 64-128-10, FedAvg, 20 clients per round, 30
rounds, 1 local epoch, batch 10, SGD lr 0.05, 2 CPUs, centralized test evaluation every round.
For repetition ``seed``, distsched builds the data split, the partition, the initial model, the
cohort of every round (its ``ClientSampler``) and every client's batch-order seed
(``client_seed(seed, round, client)``) and exports them; the Flower harness trains exactly those
clients per round (a ``FedAvg`` subclass whose ``configure_fit`` hands the exported cohort to the
nodes it samples) with each client's batch order drawn from ``torch.randperm`` on a generator seeded
with the exported seed, as distsched's client does. Both then compute the same FedAvg up to float
rounding; the script reports how close the two global models and their per-round test accuracies are.

Reported: end-to-end time (Ray start included), steady-state client updates per second (rounds 2..30,
wall clock between the ends of round 1 and round 30; cluster start and the first round excluded),
final test accuracy, agreement between the frameworks. Then a scale run of distsched: 10,000 clients
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
def export_workload(config: dict, path: Path) -> None:
    """Write what both frameworks train for ``config``: data split, client index (CSR), initial model,
    the cohort of every round and every sampled client's batch-order seed."""
    import numpy as np

    from distsched.federated import Simulation, client_seed, to_csr

    sim = Simulation(config)
    rounds, seed = int(config["rounds"]), int(config["seed"])
    cohorts = np.stack([sim.sampler.sample(r).participants for r in range(rounds)])  # rounds are 0-based
    seeds = np.array([[client_seed(seed, r, int(k)) for k in row] for r, row in enumerate(cohorts)], dtype=np.int64)
    order, offsets = to_csr(sim.parts)
    np.savez(
        path,
        x_train=sim.data.x_train,
        y_train=sim.data.y_train,
        x_test=sim.data.x_test,
        y_test=sim.data.y_test,
        order=order,
        offsets=offsets,
        init=sim.params.numpy(),
        cohorts=cohorts,
        seeds=seeds,
    )


def run_distsched(config: dict, out: Path, model_out: Path | None = None) -> dict:
    import numpy as np
    import ray

    from distsched.cluster import connect, ray_executor
    from distsched.federated import Simulation

    sim = Simulation(config)
    t0 = time.perf_counter()
    connect(num_cpus=2)
    summary = sim.run(out_dir=out, progress=False, plots=False, executor=ray_executor())
    ray.shutdown()
    summary["end_to_end_s"] = time.perf_counter() - t0
    accs = [h.test_acc for h in sim.history if h.test_acc is not None]
    summary["last5_test_acc"] = sum(accs[-5:]) / len(accs[-5:]) if accs else None
    summary["test_acc_by_round"] = accs
    summary["test_loss_by_round"] = [h.test_loss for h in sim.history if h.test_loss is not None]
    if model_out is not None:
        np.save(model_out, sim.params.numpy())
    return summary


# ---------------------------------------------------------------------------------------------
# Flower side (runs in Flower's environment; imports nothing from distsched)
# ---------------------------------------------------------------------------------------------
def run_flower(data_path: str, model_out: str, rounds: int, num_clients: int) -> dict:
    import numpy as np
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, FitIns, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch import nn
    from torch.nn import functional as F

    d = np.load(data_path)
    x_train, y_train = torch.as_tensor(d["x_train"]), torch.as_tensor(d["y_train"])
    x_test, y_test = torch.as_tensor(d["x_test"]), torch.as_tensor(d["y_test"])
    order, offsets, init = d["order"], d["offsets"], d["init"]
    cohorts, seeds = d["cohorts"], d["seeds"]
    cohort = cohorts.shape[1]

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
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.model = make_model()

        def fit(self, parameters, config):
            pid = int(config["partition-id"])
            idx = torch.as_tensor(order[offsets[pid] : offsets[pid + 1]])
            load(self.model, parameters)
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05)
            x, y = x_train[idx], y_train[idx]
            gen = torch.Generator().manual_seed(int(config["seed"]))  # as distsched's client: (seed, round, client)
            for batch in torch.randperm(len(y), generator=gen).split(10):  # 1 local epoch, batch 10
                opt.zero_grad()
                F.cross_entropy(self.model(x[batch]), y[batch]).backward()
                opt.step()
            return to_arrays(self.model), len(y), {}

    def client_fn(context: Context):
        return DigitsClient().to_client()

    class ExportedCohortFedAvg(FedAvg):
        """Stock FedAvg (sampling of nodes and aggregation included) whose round ``r`` trains the
        exported cohort ``r``: the ``j``-th sampled node gets client ``cohorts[r, j]`` (its partition
        id and batch-order seed in the fit config).

        Flower gives simulated nodes random ids that the server cannot map to partition ids without
        an extra message per node, and its simulated clients are stateless (built by ``client_fn`` for
        every message), so a node training the partition named in its config does the same work as
        node ``k`` owning partition ``k``."""

        def configure_fit(self, server_round, parameters, client_manager):
            nodes = super().configure_fit(server_round, parameters, client_manager)
            r = server_round - 1
            if len(nodes) != len(cohorts[r]):
                raise RuntimeError(f"round {server_round}: {len(nodes)} nodes sampled for a cohort of {cohort}")
            return [
                (node, FitIns(ins.parameters, {"partition-id": int(k), "seed": int(s)}))
                for (node, ins), k, s in zip(nodes, cohorts[r], seeds[r])
            ]

    ends: list[float] = []
    accs: list[float] = []
    losses: list[float] = []
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
            losses.append(loss)
            if server_round == rounds:
                np.save(model_out, np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays]))
        return loss, {"accuracy": acc}

    def server_fn(context: Context):
        strategy = ExportedCohortFedAvg(
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
        "final_test_acc": accs[-1] if accs else None,
        "final_test_loss": losses[-1] if losses else None,
        "last5_test_acc": sum(accs[-5:]) / len(accs[-5:]) if accs else None,
        "end_to_end_s": total,
        "steady_updates_per_s": steady,
        "client_updates": len(ends) * cohort,
        "test_acc_by_round": accs,
        "test_loss_by_round": losses,
    }


def flower_subprocess(python: str, data: Path, model_out: Path, rounds: int, clients: int, timeout: int) -> dict:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [python, __file__, "--flower-worker", str(data), str(model_out), str(rounds), str(clients)]
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


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------
def agreement(ours: dict, flower: dict, ours_model: Path, flower_model: Path) -> dict:
    """How close the two frameworks' FedAvg runs are: final global models and per-round test metrics."""
    import numpy as np

    a, b = np.load(ours_model).astype(np.float64), np.load(flower_model).astype(np.float64)
    acc_a, acc_b = np.asarray(ours["test_acc_by_round"]), np.asarray(flower["test_acc_by_round"])
    loss_a, loss_b = np.asarray(ours["test_loss_by_round"]), np.asarray(flower["test_loss_by_round"])
    n_test = int(FED_DIGITS["data"]["params"]["test_size"])
    return {
        "max_abs_param_diff": float(np.abs(a - b).max()),
        "rel_l2_param_diff": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
        "max_abs_param": float(np.abs(a).max()),
        "final_acc_diff_points": 100 * float(acc_a[-1] - acc_b[-1]),
        "max_abs_acc_diff_points_over_rounds": 100 * float(np.abs(acc_a - acc_b).max()),
        "max_correct_count_diff_over_rounds": int(round(float(np.abs(acc_a - acc_b).max()) * n_test)),
        "rounds_with_equal_acc": int((acc_a == acc_b).sum()),
        "max_abs_loss_diff_over_rounds": float(np.abs(loss_a - loss_b).max()),
    }


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


def timed_process(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str, str, float]:
    """Run ``cmd`` as its own process group; ``(exit code or None on timeout, stdout, stderr, wall s)``.
    On timeout the whole group is killed (a Ray cluster the process started included)."""
    import signal

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err, time.perf_counter() - t0


def whole_process(executor: str, out: Path, seed: int = 0, timeout: float = 1800) -> dict:
    """What a user waits: ``python -m distsched simulate`` on FED-DIGITS, from process start to exit
    (interpreter start, imports, data, Ray start-up when ``executor="ray"``, training, run folder)."""
    import yaml

    cfg_path = out / f"fed_digits_{seed}.yaml"
    out.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump({**FED_DIGITS, "seed": seed}), encoding="utf-8")
    cmd = [sys.executable, "-m", "distsched", "simulate", str(cfg_path), "--executor", executor,
           "--num-actors", "2", "--out", str(out), "--no-progress", "--json"]
    load = os.getloadavg()[0]
    rc, stdout, stderr, wall = timed_process(cmd, {**os.environ, "PYTHONPATH": str(ROOT)}, timeout)
    if rc != 0:
        return {"executor": executor, "seed": seed, "error": f"exit {rc} after {wall:.0f} s: {stderr[-500:]}"}
    summary = json.loads(stdout)
    return {"executor": executor, "seed": seed, "process_s": round(wall, 2),
            "final_test_acc": summary["final_test_acc"], "client_updates": summary["client_updates"],
            "load_1min_before": load}


def flower_whole_process(python: str, out: Path, seed: int = 0, timeout: float = 1800) -> dict:
    """Flower's side of the same measurement: the Flower harness (``--flower-worker``) as a whole process
    in Flower's environment, from process start to exit (interpreter, imports, loading the exported
    workload, Ray start-up, 30 rounds, Ray shutdown). The workload file is exported before the clock
    starts (distsched builds it: data split, partition, initial model, cohorts, seeds), so Flower is
    not charged for building its data and the ratio errs in Flower's favour."""
    out.mkdir(parents=True, exist_ok=True)
    data, model_out = out / f"workload_{seed}.npz", out / f"flower_{seed}.npy"
    export_workload({**FED_DIGITS, "seed": seed}, data)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [python, __file__, "--flower-worker", str(data), str(model_out), str(FED_DIGITS["rounds"]),
           str(FED_DIGITS["partition"]["num_clients"])]
    load = os.getloadavg()[0]
    rc, stdout, stderr, wall = timed_process(cmd, env, timeout)
    if rc != 0:
        return {"executor": "flower", "seed": seed, "error": f"exit {rc} after {wall:.0f} s: {stderr[-1500:]}"}
    line = [ln for ln in stdout.splitlines() if ln.startswith("FLOWER_RESULT ")][-1]
    fl = json.loads(line[len("FLOWER_RESULT ") :])
    return {"executor": "flower", "seed": seed, "process_s": round(wall, 2),
            "final_test_acc": fl["final_test_acc"], "client_updates": fl["client_updates"],
            "in_process_s": round(fl["end_to_end_s"], 2), "load_1min_before": load}


def whole_process_table(runs: list[dict]) -> dict:
    """Median process time per executor and Flower's median over each of distsched's."""
    import statistics

    med = {}
    for ex in ("local", "ray", "flower"):
        times = [r["process_s"] for r in runs if r["executor"] == ex and "error" not in r]
        if times:
            med[ex] = statistics.median(times)
    ratios = {f"flower_over_{ex}": round(med["flower"] / med[ex], 2) for ex in ("local", "ray")
              if "flower" in med and ex in med}
    return {"median_process_s": med, **ratios}


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
    parser.add_argument("--whole-process-only", action="store_true",
                        help="only time whole processes: `distsched simulate` with --executor local and ray, "
                        "and Flower's harness when its environment exists (unless --skip-flower); writes "
                        "benchmarks/results/fed_whole_process.json")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fed_vs_flower.json"))
    parser.add_argument("--repeats", type=int, default=3, help="FED-DIGITS runs per framework (seeds 0..n-1)")
    parser.add_argument("--first-seed", type=int, default=0, help="--whole-process-only: seeds FIRST..FIRST+repeats-1")
    parser.add_argument("--flower-worker", nargs=4, metavar=("DATA", "MODEL_OUT", "ROUNDS", "CLIENTS"))
    parser.add_argument("--scale-worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_worker:
        data, model_out, rounds, clients = args.flower_worker
        result = run_flower(data, model_out, int(rounds), int(clients))
        print("FLOWER_RESULT " + json.dumps(result), flush=True)
        return 0
    if args.scale_worker:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        result = run_distsched(SCALE, Path(args.scale_worker))
        print("SCALE_RESULT " + json.dumps(result), flush=True)
        return 0

    if args.whole_process_only:
        flower = not args.skip_flower and Path(args.flower_python).exists()
        if not args.skip_flower and not flower:
            print(f"no Flower environment at {args.flower_python}: timing distsched only (see --setup-flower)",
                  file=sys.stderr)
        kinds = ["local", "ray", *(["flower"] if flower else [])]
        uptime_before = os.getloadavg()
        with tempfile.TemporaryDirectory() as tmp:
            runs = []
            for seed in range(args.first_seed, args.first_seed + args.repeats):
                for ex in kinds[seed % len(kinds):] + kinds[: seed % len(kinds)]:  # rotate: load drift hits all
                    if ex == "flower":
                        runs.append(flower_whole_process(args.flower_python, Path(tmp) / "flower", seed))
                    else:
                        runs.append(whole_process(ex, Path(tmp), seed))
                    print(json.dumps(runs[-1]), flush=True)
        out = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "runs": runs, **whole_process_table(runs),
               "loadavg_before": uptime_before, "loadavg_after": os.getloadavg(),
               "command": " ".join([".venv/bin/python", "benchmarks/fed_vs_flower.py", *sys.argv[1:]])}
        Path(args.json).with_name("fed_whole_process.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
        print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
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
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join([".venv/bin/python", "benchmarks/fed_vs_flower.py", *sys.argv[1:]]),
        "cpus": 2,
    }
    have_flower = not args.skip_flower and Path(args.flower_python).exists()
    rounds, clients = int(FED_DIGITS["rounds"]), int(FED_DIGITS["partition"]["num_clients"])
    with tempfile.TemporaryDirectory() as tmp:
        # repetition i: both frameworks train seed i's workload (see the module docstring); the order
        # of the two runs alternates between repetitions so that load drifts hit both alike.
        ours_runs, flower_runs, agree = [], [], []
        for seed in range(args.repeats):
            config = {**FED_DIGITS, "seed": seed}
            data, m_ours, m_fl = (Path(tmp) / f"{n}_{seed}.npy" for n in ("workload", "ours", "flower"))
            data = data.with_suffix(".npz")
            export_workload(config, data)
            order = ("distsched", "flower") if seed % 2 == 0 else ("flower", "distsched")
            ours = fl = None
            for which in order:
                load = os.getloadavg()[0]
                if which == "distsched":
                    ours = run_distsched(config, Path(tmp) / "runs", model_out=m_ours)
                    ours_runs.append({**{k: ours[k] for k in keep}, "load_1min_before": load})
                    print("distsched", seed, json.dumps(ours_runs[-1]), flush=True)
                elif not args.skip_flower:
                    if not have_flower:
                        fl = {"error": f"no Flower environment at {args.flower_python} (see the docstring)"}
                    else:
                        fl = flower_subprocess(args.flower_python, data, m_fl, rounds, clients, timeout=480)
                    flower_runs.append({**{k: fl[k] for k in keep if k in fl}, "load_1min_before": load})
                    if "error" in fl:
                        flower_runs[-1].update(error=fl["error"], stderr_tail=fl.get("stderr_tail", ""))
                    print("flower", seed, json.dumps(flower_runs[-1]), flush=True)
            if fl is not None and "error" not in fl:
                agree.append({"seed": seed, **agreement(ours, fl, m_ours, m_fl)})
                print("agreement", json.dumps(agree[-1]), flush=True)
        results["distsched"] = _aggregate(ours_runs)
        if flower_runs:
            results["flower"] = _aggregate(flower_runs)
            results["agreement"] = agree
            fl_agg, us = results["flower"], results["distsched"]
            if fl_agg.get("steady_updates_per_s_median"):
                results["speedup_steady"] = us["steady_updates_per_s_median"] / fl_agg["steady_updates_per_s_median"]
                results["speedup_end_to_end"] = fl_agg["end_to_end_s_median"] / us["end_to_end_s_median"]
                results["accuracy_gap_points"] = 100 * (us["final_test_acc_mean"] - fl_agg["final_test_acc_mean"])
                results["last5_accuracy_gap_points"] = 100 * (us["last5_test_acc_mean"] - fl_agg["last5_test_acc_mean"])
        if not args.skip_scale:
            # its own process, so that peak memory is the scale run's alone
            load = os.getloadavg()[0]
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
                "load_1min_before": load,
            }
            print("distsched_scale", json.dumps(results["distsched_scale"]), flush=True)
    results["load_1min_end"] = os.getloadavg()[0]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
