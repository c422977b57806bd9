"""Strategies against hand-written closed forms (Reddi et al. 2021), local training against torch.optim.SGD,
schedule-aware local work, and DP-FedAvg noise and adaptive clipping against their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distsched.data import mlp
from distsched.federated import (
    STRATEGIES,
    DPFedAvg,
    LocalWork,
    build_strategy,
    centred_unclipped_fraction,
    client_seed,
    next_clip_norm,
    train_client,
)

X0 = [1.0, -2.0, 0.5]
DELTAS = [[0.5, -0.1, 0.0], [-0.2, 0.3, 1e-3], [0.05, 0.05, -0.4]]


def _run(strategy, lr=0.1):
    x = torch.tensor(X0, dtype=torch.float64)
    out = []
    for d in DELTAS:
        x = strategy.step(x, torch.tensor(d, dtype=torch.float64), lr)
        out.extend(x.tolist())
    return out


def _reference_adaptive(kind, lr=0.1, b1=0.9, b2=0.99, tau=1e-3):
    """Reddi et al. 2021, Algorithm 2, one coordinate at a time in plain Python."""
    x, m, v = list(X0), [0.0] * 3, [tau * tau] * 3
    out = []
    for d in DELTAS:
        for i in range(3):
            m[i] = b1 * m[i] + (1 - b1) * d[i]
            sq = d[i] * d[i]
            if kind == "fedadagrad":
                v[i] = v[i] + sq
            elif kind == "fedadam":
                v[i] = b2 * v[i] + (1 - b2) * sq
            else:  # fedyogi
                v[i] = v[i] - (1 - b2) * sq * math.copysign(1.0, v[i] - sq) if v[i] != sq else v[i]
            x[i] = x[i] + lr * m[i] / (math.sqrt(v[i]) + tau)
        out.extend(x)
    return out


@pytest.mark.parametrize("kind", ["fedadagrad", "fedadam", "fedyogi"])
def test_adaptive_servers_match_closed_form(kind):
    assert _run(build_strategy(kind)) == pytest.approx(_reference_adaptive(kind), rel=1e-12, abs=1e-14)


def test_fedavg_fedprox_fedavgm_closed_form():
    x = np.array(X0)
    fedavg, ref = _run(build_strategy("fedavg"), lr=0.5), []
    for d in DELTAS:
        x = x + 0.5 * np.array(d)
        ref.extend(x.tolist())
    assert fedavg == pytest.approx(ref, rel=1e-12)
    assert _run(build_strategy("fedprox", mu=0.1), lr=0.5) == pytest.approx(ref, rel=1e-12)
    x, v, ref = np.array(X0), np.zeros(3), []
    for d in DELTAS:
        v = 0.7 * v + np.array(d)
        x = x + 0.5 * v
        ref.extend(x.tolist())
    assert _run(build_strategy("fedavgm", momentum=0.7), lr=0.5) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_state_round_trip(name):
    a, b = build_strategy(name), build_strategy(name)
    x = torch.tensor(X0)
    xa = a.step(x, torch.tensor(DELTAS[0]), 0.1)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.step(xa, torch.tensor(DELTAS[1]), 0.1), b.step(xa, torch.tensor(DELTAS[1]), 0.1))


def test_strategy_errors():
    with pytest.raises(ValueError, match="strategy.name"):
        build_strategy("fedsgd")
    with pytest.raises(ValueError, match="momentum"):
        build_strategy("fedavgm", momentum=1.0)
    with pytest.raises(ValueError, match="strategy.params"):
        build_strategy("fedavg", mu=1.0)


@pytest.mark.parametrize(("name", "params", "message"), [
    ("fedsgd", {}, r"^unknown strategy 'fedsgd' in strategy.name \(known: fedadagrad, fedadam, .*\)$"),
    ("fedavg", {"mu": 1.0}, r"^unknown key strategy.params.mu for strategy 'fedavg' \(allowed: none\)$"),
    ("fedprox", {"mu": -1.0}, r"^strategy.params.mu must be >= 0, got -1"),
    ("krum", {"keep": 0}, r"^strategy.params.keep must be an integer >= 1, got 0$"),  # named once, not twice
])
def test_strategies_are_built_like_every_other_block(name, params, message):
    """``config.build``'s one-line errors (as for sync rules and controllers), keys named where they sit."""
    with pytest.raises(ValueError, match=message):
        build_strategy(name, **params)


@pytest.mark.parametrize("prox_mu", [0.0, 0.5])
def test_train_client_matches_torch_sgd(prox_mu):
    torch.manual_seed(0)
    model = mlp(8, 3, (16,))
    params = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    x, y = torch.randn(23, 8), torch.randint(0, 3, (23,))
    gen = torch.Generator().manual_seed(client_seed(0, 2, 5))
    delta, _ = train_client(model, params, x, y, lr=0.1, steps=7, batch_size=5, generator=gen, prox_mu=prox_mu)
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()) - params, delta)
    # reference: torch.optim.SGD, the same batches (a new permutation per epoch of ceil(23/5) = 5 batches)
    ref = mlp(8, 3, (16,))
    torch.nn.utils.vector_to_parameters(params.clone(), ref.parameters())
    anchor = [p.detach().clone() for p in ref.parameters()]
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(client_seed(0, 2, 5))
    batches = list(torch.randperm(23, generator=gen).split(5)) + list(torch.randperm(23, generator=gen).split(5))
    for idx in batches[:7]:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ref(x[idx]), y[idx])
        loss = loss + prox_mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(ref.parameters(), anchor))
        loss.backward()
        opt.step()
    expected = torch.nn.utils.parameters_to_vector(ref.parameters()).detach() - params
    assert torch.allclose(delta, expected, atol=1e-6)
    assert float(delta.norm()) > 0


def test_client_seed_is_a_function_of_seed_round_client():
    assert client_seed(1, 2, 3) == client_seed(1, 2, 3)
    assert len({client_seed(1, r, c) for r in range(20) for c in range(50)}) == 1000


@pytest.mark.parametrize(
    ("lr", "expected"),
    [(0.2, 2), (0.1, 4), (0.05, 16), (0.01, 40), (1.0, 2)],  # floor((0.2 / lr)^2), within [2, 40]
)
def test_qsr_local_work(lr, expected):
    work = LocalWork("epochs", base=2, rule="qsr", alpha=0.2, max_work=40)
    assert work.amount(lr) == expected
    assert LocalWork("steps", base=3).amount(lr) == 3
    assert LocalWork("epochs", base=2).steps(2, 25, 10) == 6  # 2 epochs x ceil(25 / 10)


def test_dp_noise_std_on_the_sum_is_sigma_times_clip():
    dim, z, clip, m = 200_000, 1.3, 0.7, 10.0
    dp = DPFedAvg(z, clip, m)
    mean = dp.aggregate(np.zeros(dim), 0, 10, torch.Generator().manual_seed(0))
    noise_on_sum = mean * m
    assert noise_on_sum.mean() == pytest.approx(0.0, abs=4 * z * clip / math.sqrt(dim))
    assert noise_on_sum.std() == pytest.approx(z * clip, rel=0.01)


def test_adaptive_clipping_noise_split_and_update_formula():
    z, sigma_b, m = 1.0, 5.0, 100.0
    dp = DPFedAvg(z, 0.5, m, adaptive=True, target_quantile=0.6, clip_lr=0.2, count_noise_std=sigma_b)
    z_delta = (z**-2 - (2 * sigma_b) ** -2) ** -0.5  # Andrew et al. 2021, Thm. 1
    assert dp.update_noise_multiplier == pytest.approx(z_delta)
    dim = 100_000
    mean = dp.aggregate(np.zeros(dim), 70, 96, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(dim, generator=g, dtype=torch.float64).numpy()
    count_noise = float(torch.randn(1, generator=g, dtype=torch.float64)) * sigma_b
    assert np.allclose(mean * m, noise * z_delta * 0.5)
    assert (mean * m).std() == pytest.approx(z_delta * 0.5, rel=0.02)
    # centred bits: b = (sum_k (b_k - 1/2) + noise) / m + 1/2 with 70 of 96 clients unclipped
    b = ((70 - 48) + count_noise) / m + 0.5
    assert dp.clip_norm == pytest.approx(0.5 * math.exp(-0.2 * (b - 0.6)), rel=1e-12)
    with pytest.raises(ValueError, match="count_noise_std"):
        DPFedAvg(2.0, 1.0, 100, adaptive=True, count_noise_std=0.5)


def test_adaptive_clip_converges_to_target_quantile():
    # norms ~ Exp(1): the gamma-quantile is -ln(1 - gamma); Andrew et al.'s update drives C there.
    rng = np.random.default_rng(0)
    for gamma in (0.5, 0.8):
        clip = 0.1
        for _ in range(3000):
            norms = rng.exponential(1.0, 100)
            clip = next_clip_norm(clip, float((norms <= clip).mean()), gamma, 0.2)
        assert clip == pytest.approx(-math.log(1 - gamma), rel=0.1)


def test_adaptive_count_release_has_the_sensitivity_the_accounting_assumes():
    """Thm. 1 of Andrew et al. 2021 charges z with z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2, which holds only
    if the released count moves by at most 1/2 when one client joins or leaves (noise sigma_b on it)."""
    m, noise = 50.0, 0.0
    rng = np.random.default_rng(1)
    for _ in range(200):
        bits = rng.integers(0, 2, size=int(rng.integers(1, 80)))
        base = centred_unclipped_fraction(int(bits.sum()), len(bits), noise, m) * m
        for extra in (0, 1):  # the added client clipped or not
            added = centred_unclipped_fraction(int(bits.sum()) + extra, len(bits) + 1, noise, m) * m
            assert abs(added - base) == pytest.approx(0.5)
    # the estimator is unbiased for the unclipped fraction when the cohort has its expected size
    assert centred_unclipped_fraction(30, 50, 0.0, 50.0) == pytest.approx(30 / 50)
