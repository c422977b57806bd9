"""DP-FedAvg as a wrapper strategy (issue 15): the wrapper around FedAvg/FedAdam/FedAvgM against the mechanism's
closed form (noise ``N(0, (z C)^2)`` on the sum, ``/ m``, then the inner server step), its accounting against
Opacus, the refused compositions, the simulator's round through the wrapper, and old-layout checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from distsched.federated import DifferentialPrivacy, Simulation, build_strategy, fed_config
from distsched.federated.sampling import round_rng
from distsched.federated.strategies.differential_privacy import NOISE_STREAM

DIM, Z, CLIP, M, Q = 5, 1.3, 0.7, 4.0, 0.2


def _wrapped(inner: str, **params):
    return DifferentialPrivacy.build(build_strategy(inner, **params), sample_rate=Q, expected_cohort=M, rounds=3,
                                     seed=7, noise_multiplier=Z, clip_norm=CLIP, delta=1e-5, reproducible=True)


def _noise(seed: int, round_: int) -> np.ndarray:
    """The reproducible noise of a round: N(0, 1) from the round's generator (float64)."""
    gen = torch.Generator().manual_seed(int(round_rng(seed, round_, NOISE_STREAM).integers(2**62)))
    return torch.randn(DIM, generator=gen, dtype=torch.float64).numpy()


@pytest.mark.parametrize(("inner", "params"), [("fedavg", {}), ("fedavgm", {"momentum": 0.6}), ("fedadam", {})])
def test_wrapper_steps_the_inner_strategy_on_the_noisy_mean(inner, params):
    dp = _wrapped(inner, **params)
    ref = build_strategy(inner, **params)
    x = x_ref = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    rng = np.random.default_rng(0)
    for r in range(3):
        sums = rng.normal(size=DIM)
        mean, info = dp.aggregate_sum(r, sums, 99.0, 3, 4)  # the weight sum is not used: m is fixed
        expected = (sums + Z * CLIP * _noise(7, r)) / M  # McMahan et al. 2018: fixed denominator m = qN
        np.testing.assert_allclose(mean, expected, rtol=1e-15, atol=1e-15)
        assert info == {"clip_norm": CLIP, "unclipped_fraction": 0.75}
        x = dp.step(x, torch.from_numpy(mean), 0.5)
        x_ref = ref.step(x_ref, torch.from_numpy(expected), 0.5)
        assert torch.allclose(x, x_ref, rtol=1e-14, atol=1e-15)
        dp.end_round()
    assert dp.client_options(0)["clip_norm"] == CLIP and dp.client_options(0)["weighting"] == "uniform"
    assert build_strategy("fedprox", mu=0.3).client_options(0).items() <= DifferentialPrivacy.build(
        build_strategy("fedprox", mu=0.3), sample_rate=Q, expected_cohort=M, rounds=1, seed=0,
        noise_multiplier=Z).client_options(0).items()


def test_wrapper_charges_one_gaussian_release_per_round_like_opacus():
    dp = _wrapped("fedadam")
    eps = [dp.end_round()["epsilon"] for _ in range(5)]
    ref = RDPAccountant()
    for k in range(1, 6):
        ref.history = [(Z, Q, k)]
        assert eps[k - 1] == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-12)
    assert dp.summary() == {"epsilon": eps[-1], "delta": 1e-5, "noise_multiplier": Z, "private": False}


@pytest.mark.parametrize(("name", "params", "why"), [
    ("krum", {"num_malicious": 1}, "per-client"), ("fedmedian", {}, "per-client"),
    ("trimmed_mean", {"beta": 0.1}, "per-client"),
])
def test_robust_aggregators_are_refused_in_one_line(name, params, why):
    with pytest.raises(ValueError, match=why) as err:
        _wrapped(name, **params)
    assert "\n" not in str(err.value)


def _sim_config(strategy):
    return {"rounds": 3, "seed": 4, "data": {"name": "digits"}, "model": {"hidden": [16]},
            "partition": {"scheme": "iid", "num_clients": 40}, "sampling": {"fraction": 0.25, "poisson": True},
            "client": {"local_unit": "steps", "local_work": 2}, "strategy": strategy, "chunks_per_round": 2,
            "dp": {"noise_multiplier": 1.1, "clip_norm": 0.3, "delta": 1e-4, "adaptive": True,
                   "count_noise_std": 1.0, "reproducible": True}}


def test_simulation_round_goes_through_the_wrapper():
    """The simulator's round with ``strategy: fedadam`` and a dp block: the clients clip to C with uniform weight,
    the update is the wrapper's noisy mean and the server step is FedAdam's on it."""
    sim = Simulation(fed_config(_sim_config({"name": "fedadam", "server_lr": 0.05})))
    assert isinstance(sim.strategy, DifferentialPrivacy) and sim.strategy.inner.name == "fedadam"
    tasks, _ = sim.plan_round(0)
    assert all(t.clip_norm == 0.3 and t.weighting == "uniform" for t in tasks)
    from distsched.federated import ClientWorker
    worker = ClientWorker(*sim.worker_setup().args())
    results = [worker.run(t, sim.params.numpy()) for t in tasks]
    total = sum(r.update_sum for r in results)
    trained = sum(len(r.clients) for r in results)
    assert max(float(n) for r in results for n in r.norms) > 0
    delta, info = sim.combine(0, results)
    gen = torch.Generator().manual_seed(int(round_rng(4, 0, NOISE_STREAM).integers(2**62)))
    z_delta = (1.1**-2 - 2.0**-2) ** -0.5  # adaptive: Andrew et al. 2021, Thm. 1
    noise = torch.randn(sim.params.numel(), generator=gen, dtype=torch.float64).numpy()
    np.testing.assert_allclose(delta, (total + z_delta * 0.3 * noise) / 10.0, rtol=1e-12, atol=1e-15)
    assert info["trained"] == trained and info["clip_norm"] == 0.3 and sim.dp.clip_norm != 0.3


def test_checkpoints_of_both_layouts_resume_alike():
    """A checkpoint written before DP was a wrapper (``dp``, ``accountant``, ``guard`` at the top level) loads
    as today's does."""
    cfg = _sim_config({"name": "fedavgm", "params": {"momentum": 0.5}})
    cfg["dp"]["target_epsilon"] = 40.0
    a = Simulation(fed_config(cfg))
    a.strategy.inner.velocity = torch.arange(float(a.params.numel()))
    a.strategy.mechanism.clip_norm = 0.25
    a.strategy.end_round()
    a.strategy.end_round()
    new = {**a.state_dict(), "round": 2}
    s = new["strategy"]
    old = {"params": new["params"], "seed": 4, "round": 2, "strategy": s["inner"], "dp": s["dp"],
           "accountant": s["accountant"], "guard": s["guard"]}
    for state in (new, old):
        b = Simulation(fed_config(cfg))
        b.load_state_dict(state)
        assert b.round == 2 and b.dp.clip_norm == 0.25 and b.guard.steps == 2
        assert torch.equal(b.strategy.inner.velocity, a.strategy.inner.velocity)
        assert b.accountant.epsilon(1e-4) == pytest.approx(a.accountant.epsilon(1e-4), rel=1e-12)
    plain = Simulation(fed_config({**cfg, "dp": None, "sampling": {"cohort_size": 10}}))
    old_plain = {"params": new["params"], "seed": 4, "round": 1, "strategy": {"velocity": None}, "dp": None,
                 "accountant": None, "guard": None}
    plain.load_state_dict(old_plain)
    assert plain.round == 1 and plain.private is None
    with pytest.raises(ValueError, match="written with DP"):
        plain.load_state_dict(old)
    assert math.isfinite(b.accountant.epsilon(1e-4))
