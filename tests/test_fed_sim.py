"""The simulator on the real Ray fixture: 1 vs 2 actors, the in-process executor against Ray bit for
bit, a real actor death mid-chunk (and a kill, slow), and the CLI. What does not depend on the executor
(aggregation against a direct weighted mean, one chunk against four, resume, DP-FedAvg accounting
against Opacus, the budget guard) runs on the in-process executor, which runs the same client code and
equals Ray bit for bit (test_in_process_executor_equals_ray_bit_for_bit)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distsched.cluster import ray_executor
from distsched.federated import InProcessExecutor, Simulation, client_seed, train_client
from distsched.report import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("round_time_s", "elapsed_s")
RAY = ray_executor()  # joins the session's ray_cluster fixture


def _config(**over):
    cfg = {
        "name": "t",
        "seed": 11,
        "rounds": 6,
        "data": {"name": "digits"},
        "partition": {"scheme": "dirichlet", "num_clients": 30, "alpha": 0.5, "min_size": 2},
        "model": {"hidden": [32]},
        "client": {
            "lr": {"name": "cosine", "lr": 0.1, "total_steps": 6, "min_lr": 0.02},
            "batch_size": 10,
            "local_work_rule": "qsr",  # local epochs grow as the client LR decays
            "qsr_alpha": 0.1,
            "max_local_work": 3,
        },
        "sampling": {
            "cohort_size": 9,
            "dropout": 0.1,
            "speed_sigma": 0.5,
            "deadline": 3.0,
            "late_policy": "downweight",
        },
        "strategy": {"name": "fedadam", "server_lr": 0.05},
        "checkpoint_every": 2,
        "num_actors": 2,
        "chunks_per_round": 4,  # two chunks per actor
    }
    cfg.update(over)
    return cfg


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference_run(ray_cluster, tmp_path_factory):
    sim = Simulation(_config())
    summary = sim.run(executor=RAY, out_dir=tmp_path_factory.mktemp("ref"), progress=False)
    return sim, summary


def test_one_round_equals_direct_weighted_mean(tmp_path):
    cfg = _config(rounds=1, strategy={"name": "fedavg"}, sampling={"cohort_size": 7})
    cfg["client"] = {**cfg["client"], "local_work_rule": "constant"}
    sim = Simulation(cfg)
    start = sim.params.clone()
    sim.run(out_dir=tmp_path, progress=False, plots=False)  # in-process: the aggregation is the executor's caller's
    # reference: every sampled client trained here, in-process, and averaged by sample counts
    cohort = sim.sampler.sample(0).sampled
    x, y = torch.as_tensor(sim.data.x_train), torch.as_tensor(sim.data.y_train)
    deltas, weights = [], []
    for k in cohort:
        idx = torch.as_tensor(sim.parts[k])
        gen = torch.Generator().manual_seed(client_seed(cfg["seed"], 0, int(k)))
        steps = math.ceil(len(idx) / 10)
        d, _ = train_client(sim.model, start, x[idx], y[idx], lr=0.1, steps=steps, batch_size=10, generator=gen)
        deltas.append(d.double())
        weights.append(len(idx))
    w = torch.tensor(weights, dtype=torch.float64)
    expected = start.double() + (torch.stack(deltas) * w[:, None]).sum(0) / w.sum()
    assert torch.allclose(sim.params.double(), expected, atol=1e-6, rtol=0)
    assert not torch.equal(sim.params, start)


def test_actor_count_does_not_change_the_result(reference_run, tmp_path):
    ref, _ = reference_run
    # same chunking on one actor: bit-identical
    one = Simulation(_config(num_actors=1))
    one.run(executor=RAY, out_dir=tmp_path / "a", progress=False, plots=False)
    assert torch.equal(one.params, ref.params)
    # one chunk instead of four (in-process: chunking, not the executor, groups the sums): float64 sums
    # grouped differently (~1e-16 relative), then cast to float32 and stepped by FedAdam; equal to
    # float32 rounding
    single = Simulation(_config(num_actors=1, chunks_per_round=None))
    single.run(out_dir=tmp_path / "b", progress=False, plots=False)
    assert torch.allclose(single.params, ref.params, atol=1e-6, rtol=0)


def test_in_process_executor_equals_ray_bit_for_bit(reference_run, tmp_path):
    ref, ref_summary = reference_run
    local = Simulation(_config())  # default executor: in this process, chunked as on the 2 actors
    summary = local.run(out_dir=tmp_path, progress=False, plots=False)
    assert isinstance(local.pool, InProcessExecutor) and summary["num_actors"] == 2
    assert torch.equal(local.params, ref.params)
    assert _rows(summary["run_dir"]) == _rows(ref_summary["run_dir"])
    assert summary["final_test_acc"] == ref_summary["final_test_acc"]


def test_resume_gives_identical_results(reference_run, tmp_path):
    ref, ref_summary = reference_run
    first = Simulation(_config())  # in-process, against the Ray reference
    first.run(out_dir=tmp_path, progress=False, plots=False, stop_after=5)  # "crashes" after round 5 (checkpoint at 4)
    run_dir = first.folder.root
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["round_000002.pt", "round_000004.pt"]
    resumed = Simulation(_config())
    summary = resumed.run(resume=run_dir, progress=False, plots=False)
    assert resumed.round == 6
    assert torch.equal(resumed.params, ref.params)
    assert _rows(run_dir) == _rows(ref_summary["run_dir"])
    assert [r["round"] for r in _rows(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert summary["final_test_acc"] == ref_summary["final_test_acc"]


@pytest.mark.slow
def test_killed_actor_is_replaced_and_round_completes(reference_run, tmp_path):
    """Slow (a whole 6-round run on a fresh pool); test_actor_dying_mid_chunk_changes_nothing covers the
    same property fast: a dead actor's chunks re-run on a replacement, the failures are counted in the
    metrics, and the rounds (records and parameters) equal the uninterrupted run's."""
    import ray

    ref, ref_summary = reference_run
    killed, rounds_submitted = [], []

    def kill_mid_round(pool):
        rounds_submitted.append(len(rounds_submitted))  # every round has chunks: the call count is the round
        if rounds_submitted[-1] == 2 and not killed:
            killed.append(pool.actors[0])
            ray.kill(pool.actors[0], no_restart=True)

    sim = Simulation(_config())
    executor = ray_executor(on_submitted=kill_mid_round)
    summary = sim.run(executor=executor, out_dir=tmp_path, progress=False, plots=False)
    assert killed and summary["actor_failures"] >= 1
    rows = _rows(summary["run_dir"])
    # The kill is sent right after round 3's chunks are submitted (0-based round 2); the killed actor
    # holds two of the four chunks. Those it had not finished when the kill landed fail and are re-run
    # on one replacement actor (should it have finished both, round 4's chunks fail instead).
    failures = [r["actor_failures"] for r in rows]
    assert failures[:2] == [0, 0] and failures[4:] == [0, 0]
    assert 1 <= sum(failures) <= 2 and (failures[2] == 0 or failures[3] == 0)
    assert torch.equal(sim.params, ref.params)
    strip = [{k: v for k, v in r.items() if k != "actor_failures"} for r in rows]
    assert strip == [{k: v for k, v in r.items() if k != "actor_failures"} for r in _rows(ref_summary["run_dir"])]


class _DiesOnMarker(torch.nn.Module):
    """The reference MLP; inside a Ray actor, the first process to make its ``after``-th forward call
    while ``marker`` exists removes it and exits (a real worker death in the middle of a chunk)."""

    def __init__(self, input_shape, num_classes, hidden=(32,), marker="", after=8):
        super().__init__()
        from distsched.data import mlp

        self.net = mlp(input_shape, num_classes, hidden)
        self.marker, self.after, self.calls = marker, after, 0

    def forward(self, x):
        import ray

        self.calls += 1
        if self.calls >= self.after and ray.get_runtime_context().get_actor_id() is not None:
            try:
                os.remove(self.marker)
            except FileNotFoundError:
                pass
            else:
                os._exit(1)
        return self.net(x)


def _dies_on_marker(input_shape, num_classes, **kwargs):
    return _DiesOnMarker(input_shape, num_classes, **kwargs)


def test_actor_dying_mid_chunk_changes_nothing(reference_run, tmp_path):
    ref, ref_summary = reference_run
    marker = tmp_path / "die"
    marker.write_text("")
    cfg = _config(model={"name": "tests.test_fed_sim:_dies_on_marker"})
    cfg["model"]["kwargs"] = {"hidden": [32], "marker": str(marker), "after": 8}
    sim = Simulation(cfg)
    summary = sim.run(executor=RAY, out_dir=tmp_path / "run", progress=False, plots=False, stop_after=2)
    assert not marker.exists() and summary["actor_failures"] >= 1
    expected = torch.load(Path(ref_summary["run_dir"]) / "checkpoints" / "round_000002.pt", weights_only=False)
    assert torch.equal(sim.params, expected["params"])
    rows = _rows(summary["run_dir"])
    assert sum(r["actor_failures"] for r in rows) == summary["actor_failures"]  # counted in the round's record
    strip = lambda rs: [{k: v for k, v in r.items() if k != "actor_failures"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(_rows(ref_summary["run_dir"])[:2])


def test_run_folder_and_participation(reference_run):
    _, summary = reference_run
    root = Path(summary["run_dir"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (root / name).exists()
    for plot in ("accuracy", "loss", "participation", "partition"):
        assert (root / "plots" / f"{plot}.png").stat().st_size > 1000
    rows = read_metrics(root / "metrics.jsonl")
    assert all(r["sampled"] == 9 and r["trained"] == 9 - r["dropped"] for r in rows)
    assert sum(r["late"] for r in rows) > 0  # speed_sigma 0.5 with a 3-unit deadline: some are late
    cosine = [0.02 + 0.04 * (1 + math.cos(math.pi * t / 6)) for t in range(6)]  # the client LR schedule by round
    assert [r["client_lr"] for r in rows] == pytest.approx(cosine)
    assert [r["local_work"] for r in rows] == [min(3, max(1, math.floor((0.1 / lr) ** 2))) for lr in cosine]
    assert len({r["local_work"] for r in rows}) > 1
    assert json.loads((root / "summary.json").read_text())["client_updates"] == sum(r["trained"] for r in rows)


def _dp_config(**over):
    cfg = _config(
        rounds=4,
        partition={"scheme": "iid", "num_clients": 200},
        sampling={"fraction": 0.1, "poisson": True},
        strategy={"name": "fedavg"},
        dp={"noise_multiplier": 0.8, "clip_norm": 0.5, "delta": 1e-4, "adaptive": True, "count_noise_std": 2.0},
    )
    cfg.update(over)
    return cfg


def test_dp_fedavg_epsilon_matches_opacus(tmp_path):
    from opacus.accountants import RDPAccountant

    cfg = _dp_config()
    del cfg["dp"]["noise_multiplier"]
    cfg["dp"]["target_epsilon"] = 6.0  # the noise multiplier is planned to spend 6.0 in the 4 rounds
    summary = Simulation(cfg).run(out_dir=tmp_path, progress=False)  # in-process: the accounting is the server's
    assert summary["rounds"] == 4 and summary["stop_reason"] == "rounds"
    acc = RDPAccountant()
    acc.history = [(summary["noise_multiplier"], 20 / 200, 4)]
    assert summary["epsilon"] == pytest.approx(acc.get_epsilon(delta=1e-4), rel=1e-9)
    assert 6.0 * (1 - 2e-3) <= summary["epsilon"] <= 6.0
    rows = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    clip = [r["clip_norm"] for r in rows]
    assert clip[0] == 0.5 and len(set(clip)) == 4  # adaptive clipping moved the norm every round
    assert (Path(summary["run_dir"]) / "plots" / "epsilon.png").exists()


def test_budget_guard_stops_before_exceeding(tmp_path):
    from opacus.accountants import RDPAccountant

    def eps(rounds):
        acc = RDPAccountant()
        acc.history = [(0.8, 0.1, rounds)]
        return acc.get_epsilon(delta=1e-4)

    target = (eps(2) + eps(3)) / 2  # allows 2 rounds, not 3
    cfg = _dp_config(rounds=10)
    cfg["dp"] = {**cfg["dp"], "target_epsilon": target}
    summary = Simulation(cfg).run(out_dir=tmp_path, progress=False, plots=False)  # in-process
    assert summary["stop_reason"] == "privacy budget" and summary["rounds"] == 2
    assert summary["epsilon"] <= target


def test_cli_simulate_joins_cluster_and_writes_run_folder(ray_cluster, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "distsched", "simulate", str(ROOT / "examples" / "fed_digits.yaml")]
    cmd += ["--address", ray_cluster["address"], "--rounds", "2", "--num-actors", "1"]
    cmd += ["--out", str(tmp_path), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()  # one summary line, the run folder, the dashboard
    assert lines[-3].startswith("rounds 2 (") and "client updates 40" in lines[-3], out.stdout
    run_dir = Path(lines[-2].removeprefix("run folder: "))
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 2
    dash = run_dir / "plots" / "dashboard.png"
    assert lines[-1] == f"dashboard: {dash}" and dash.exists()


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    from distsched.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 3\nsampling: {cohort_size: 5, dropout: 1.5}\n")
    assert main(["simulate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "dropout" in err and "1.5" in err


def test_resume_cannot_flip_dp_reproducible():
    """A run whose noise and cohorts came from the config's seed (not private) never resumes as a private one
    (its summary would say ``private: true``), nor the other way round."""
    seeded = _dp_config()
    seeded["dp"] = {**seeded["dp"], "reproducible": True}
    secret, replayable = Simulation(_dp_config()), Simulation(seeded)
    for sim, state in [(secret, replayable.state_dict()), (replayable, secret.state_dict())]:
        with pytest.raises(ValueError, match="dp.reproducible: the run was started with reproducible"):
            sim.load_state_dict({**state, "round": 1})
    secret.load_state_dict({**Simulation(_dp_config()).state_dict(), "round": 1})  # same setting: loads


def test_resume_cannot_drop_or_add_dp_or_drop_the_budget():
    """A checkpoint's DP state must meet a config with the same DP: never silently lose the budget."""
    with_budget = _dp_config()
    with_budget["dp"] = {**with_budget["dp"], "target_epsilon": 50.0}
    noise_only, no_dp = Simulation(_dp_config()), Simulation(_config())
    budgeted = Simulation(with_budget)
    for sim, state, match in [
        (no_dp, noise_only.state_dict(), "written with DP"),
        (noise_only, no_dp.state_dict(), "written without DP"),
        (noise_only, budgeted.state_dict(), "target_epsilon"),
    ]:
        with pytest.raises(ValueError, match=match):
            sim.load_state_dict({**state, "round": 1})
    # a noise-only run resumed with a budget keeps its spent history: the guard sees it
    noise_only.accountant.step(0.8, 0.1, steps=3)
    budgeted.load_state_dict({**noise_only.state_dict(), "round": 3})
    assert budgeted.guard.steps == 3 and budgeted.guard.epsilon == pytest.approx(noise_only.accountant.epsilon(1e-4))
