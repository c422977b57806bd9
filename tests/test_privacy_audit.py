"""The one-run privacy audit (Steinke, Nasr & Jagielski 2023): the bound against independent references,
the canary plumbing against Opacus itself, and whole audits of correct and deliberately broken DP-SGD."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from scipy.special import logit
from scipy.stats import binom

from distsched.cli import main
from distsched.config import load_yaml
from distsched.privacy import epsilon as epsilon_of
from distsched.privacy.audit import (
    PASS,
    VIOLATION,
    GradientCanaries,
    best_lower_bound,
    count_correct,
    detectable_epsilon,
    epsilon_lower_bound,
    p_value,
)


# ------------------------------------------------------------------------------- the bound itself
def _reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 5.2 as printed: f(v) + 2 m delta max_{i in [m]} (f(v - i) - f(v)) / i, with exact binomial
    coefficients (math.comb) and the maximum over every i up to m (no truncation)."""
    p = math.exp(eps) / (1.0 + math.exp(eps))

    def f(x: int) -> float:  # P[Binomial(r, p) >= x]
        if x <= 0:
            return 1.0
        return math.fsum(math.comb(r, j) * p**j * (1.0 - p) ** (r - j) for j in range(x, r + 1))

    gain = max((f(v - i) - f(v)) / i for i in range(1, m + 1))
    return min(1.0, f(v) + 2.0 * m * delta * gain)


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), [
    (10, 10, 10, 1.0, 0.0), (10, 10, 7, 0.5, 1e-3), (50, 20, 18, 2.0, 1e-4), (100, 60, 55, 1.5, 1e-5),
    (100, 60, 30, 0.0, 1e-5), (200, 100, 100, 3.0, 1e-5), (200, 40, 0, 1.0, 1e-2), (30, 30, 29, 4.0, 0.01),
])
def test_p_value_matches_the_theorem_computed_directly(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(_reference_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("r", [10, 100, 1000])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_all_right_without_delta_is_the_closed_form(r, confidence):
    # v = r right, delta = 0: P[Bin(r, p) >= r] = p^r = 1 - confidence  =>  eps = logit((1 - confidence)^(1/r))
    expected = float(logit((1.0 - confidence) ** (1.0 / r)))
    assert epsilon_lower_bound(r, r, r, 0.0, confidence) == pytest.approx(expected, abs=1e-7)


def test_lower_bound_is_the_root_and_falls_with_errors_and_delta():
    eps = epsilon_lower_bound(1000, 500, 480, 1e-5, 0.95)
    assert p_value(1000, 500, 480, eps, 1e-5) == pytest.approx(0.05, rel=1e-6)
    assert epsilon_lower_bound(1000, 500, 470, 1e-5, 0.95) < eps  # fewer right guesses: weaker evidence
    assert epsilon_lower_bound(1000, 500, 480, 1e-4, 0.95) < eps  # a larger delta explains more
    assert epsilon_lower_bound(1000, 500, 250, 1e-5, 0.95) == 0.0  # chance level refutes nothing


@pytest.mark.parametrize(("eps", "m", "median"), [(0.5, 200, 0.26), (1.0, 1000, 0.88), (2.0, 1000, 1.84),
                                                   (4.0, 1000, 3.60)])
def test_bound_is_valid_and_nearly_tight_on_randomized_response(eps, m, median):
    # eps-DP randomized response is the extremal eps-DP mechanism: each of m guesses is right with probability
    # e^eps/(1+e^eps), so v ~ Binomial(m, .). Exactly (summing over v): the 95% lower bound exceeds eps with
    # probability at most 5%, and on this worst case its median comes close to eps (more so with more guesses).
    dist = binom(m, math.exp(eps) / (1.0 + math.exp(eps)))
    v = np.arange(int(dist.ppf(1e-9)), m + 1)
    bounds = np.array([epsilon_lower_bound(m, m, int(k), 0.0, 0.95) for k in v])
    assert 0.01 < dist.pmf(v)[bounds > eps].sum() <= 0.05
    assert bounds[np.searchsorted(np.cumsum(dist.pmf(v)), 0.5)] == pytest.approx(median, abs=0.01)


def test_count_correct_and_bonferroni():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, True, False, True, False, False])
    assert count_correct(scores, included, 1) == 2  # top "in" right, bottom "out" right
    assert count_correct(scores, included, 2) == 4
    assert count_correct(scores, included, 3) == 4  # 3rd highest is out, 3rd lowest is in
    with pytest.raises(ValueError, match="k must be in"):
        count_correct(scores, included, 4)  # a canary guessed both ways
    # perfectly separated scores reach the audit's ceiling, computed with the same number of tests
    m = 400
    included = np.arange(m) < m // 2
    perfect = {"a": included.astype(float), "b": np.zeros(m)}
    best, tests = best_lower_bound(perfect, included, 1e-5, 0.95)
    assert tests == 2 * 7 and best.score == "a" and best.correct == best.guesses
    assert best.epsilon_lower == pytest.approx(detectable_epsilon(m, 1e-5, 0.95, tests))
    assert best.epsilon_lower < epsilon_lower_bound(m, best.guesses, best.guesses, 1e-5, 0.95)  # the correction


# ------------------------------------------------------------------------------- the canary plumbing
def _dp_step(noise_multiplier: float, canaries: int = 0, seed: int = 3,
             secure: bool = False) -> tuple[DPOptimizer, GradientCanaries | None]:
    """One real Opacus DP-SGD step (batch of 8, C = 0.5) on a linear layer, optionally with canaries (q = 1)."""
    torch.manual_seed(0)
    model = GradSampleModule(torch.nn.Linear(6, 4))
    gen = torch.Generator().manual_seed(seed)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=noise_multiplier,
                      max_grad_norm=0.5, expected_batch_size=8, generator=gen, secure_mode=secure)
    canary_set = None
    if canaries:
        canary_set = GradientCanaries(opt.params, canaries, 0.5, 1.0, np.random.default_rng(1))
        canary_set.install(opt)
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(2)), torch.arange(8) % 4
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return opt, canary_set


def _flat_grad(opt: DPOptimizer) -> np.ndarray:
    return torch.cat([p.grad.reshape(-1) for p in opt.params]).double().numpy() * 8  # undo Opacus' 1/8


@pytest.mark.filterwarnings("ignore:Full backward hook")  # Opacus on a bare Linear layer: harmless
def test_canaries_join_the_clipped_sum_with_norm_c():
    plain, _ = _dp_step(0.0)
    with_canaries, canaries = _dp_step(0.0, canaries=12)
    diff = _flat_grad(with_canaries) - _flat_grad(plain)
    expected = np.zeros_like(diff)  # q = 1: every included canary is in the step, as s_i * C at coordinate j_i
    expected[canaries.coords] = canaries.signs * 0.5 * canaries.included
    assert 0 < canaries.included.sum() < 12
    np.testing.assert_allclose(diff, expected, atol=1e-6)
    np.testing.assert_array_equal(canaries.times_sampled, canaries.included.astype(int))
    # what is recorded is the released noisy sum (before Opacus divides by the expected batch size)
    np.testing.assert_allclose(canaries.released[0], _flat_grad(with_canaries)[canaries.coords], atol=1e-6)


@pytest.mark.filterwarnings("ignore:Full backward hook")
@pytest.mark.parametrize("secure", [False, True])
def test_replayed_noise_is_the_noise_opacus_drew(secure):
    noisy, canaries = _dp_step(1.3, canaries=20, seed=11, secure=secure)
    _, quiet = _dp_step(0.0, canaries=20)
    released, clean = np.asarray(canaries.released), np.asarray(quiet.released)
    # the released sum minus the noise replayed from the seed is the noise-free clipped sum with its canaries
    replay = canaries.replay_noise(noisy, 11)
    np.testing.assert_allclose(released - replay, clean, atol=1e-5)
    assert np.abs(replay).max() > 0.1  # there was noise to remove
    assert np.abs(released - canaries.replay_noise(noisy, 12) - clean).max() > 0.1  # another seed: no


def test_canaries_refuse_more_than_the_parameters():
    with pytest.raises(ValueError, match="canaries must be <= the model's 28"):
        GradientCanaries([torch.zeros(4, 6), torch.zeros(4)], 29, 1.0, 0.1, np.random.default_rng(0))


# ------------------------------------------------------------------------------- whole audits
def _digits_dp(tmp_path, **privacy) -> str:
    """examples/digits_dp.yaml shrunk for speed: 150 steps of batch 2 x 64 on 40% of the digits
    (q = 128 / 719), the same model, budget (epsilon 4 at delta 1e-5), clipping and noise shape."""
    cfg = load_yaml("examples/digits_dp.yaml")
    cfg.update(steps=150, batch_size=64, checkpoint={"every": 150, "keep": 1},
               schedule={**cfg["schedule"], "total_steps": 150}, data={**cfg["data"], "test_fraction": 0.6})
    cfg["privacy"].update(privacy)
    path = tmp_path / "digits_dp_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _noise_scaled_down(training) -> None:
    """Break the mechanism: Opacus draws noise with sigma / 100, the accountant still records sigma."""
    opt = training.optimizer
    inner = opt.add_noise

    def add_noise() -> None:
        nominal = opt.noise_multiplier
        opt.noise_multiplier = nominal / 100
        try:
            inner()
        finally:
            opt.noise_multiplier = nominal

    opt.add_noise = add_noise


def _audit(path: str, **options):
    from distsched.commands.audit import audit_config
    from distsched.train.config import load_config

    return audit_config(load_config(path), canary_seed=5, **options)[0]


def test_correct_run_stays_below_the_accountant(tmp_path):
    report = _audit(_digits_dp(tmp_path))
    assert report.verdict == PASS
    assert report.epsilon_accountant == pytest.approx(4.0, abs=0.01)  # the planned budget, spent
    assert report.epsilon_lower <= report.epsilon_accountant
    assert report.steps == 150 and report.sample_rate == pytest.approx(128 / 719)


def test_noise_scaled_down_is_a_violation(tmp_path):
    report = _audit(_digits_dp(tmp_path), tamper=_noise_scaled_down)
    assert report.verdict == VIOLATION
    assert report.epsilon_lower > report.epsilon_accountant == pytest.approx(4.0, abs=0.01)
    assert "known seed" not in report.score  # found from the released gradients alone


def test_leaked_noise_seed_is_a_violation(tmp_path, capsys):
    # reproducible noise comes from the config's seed: the auditor replays Opacus' generator and subtracts it
    assert main(["audit", _digits_dp(tmp_path, reproducible=True), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == VIOLATION and report["score"].endswith("known seed")
    assert report["epsilon_lower"] > report["epsilon_accountant"]


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    cfg = load_yaml("examples/digits_dp.yaml")
    del cfg["privacy"]
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["audit", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no privacy block" in err
    assert main(["audit", "examples/digits_dp.yaml", "--canaries", "1"]) == 2
    assert "canaries" in capsys.readouterr().err
    assert main(["audit", "examples/fed_digits_dp.yaml"]) == 2
    assert "federated simulation config" in capsys.readouterr().err


def test_local_mode_is_audited_on_the_worker_with_the_largest_rate(tmp_path):
    # DP local SGD (sync every 4 steps): worker k spends eps(sigma, B / N_k, T); the audit runs the smallest
    # shard at its own rate and compares with the accountant's epsilon for exactly that history
    from distsched.commands.audit import audit_config
    from distsched.privacy import epsilon
    from distsched.train.config import load_config

    path = _digits_dp(tmp_path, mode="auto")
    cfg = load_yaml(path)
    cfg.update(steps=30, sync={"rule": "fixed", "h": 4}, schedule={**cfg["schedule"], "total_steps": 30})
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(cfg))
    report, mode = audit_config(load_config(tmp_path / "local.yaml"), canaries=200, canary_seed=1)
    smallest = 719 // 2  # iid shards of the 719 training digits: 360 and 359
    assert mode == "local" and report.sample_rate == pytest.approx(64 / smallest)
    assert report.epsilon_accountant == pytest.approx(
        epsilon([(report.noise_multiplier, report.sample_rate, 30)], 1e-5), rel=1e-9)
    assert report.epsilon_accountant == pytest.approx(4.0, abs=0.01)  # planned for the largest q_k
    assert report.verdict == PASS and report.canaries == 200 and report.steps == 30


class _NoEmptyBatches(torch.nn.Module):
    """A linear model whose forward refuses a batch of 0 examples (as many real models do); it counts
    the batches it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:
            raise RuntimeError("this model cannot take a batch of 0 examples")
        self.forwards += 1
        return self.fc(x)


def test_empty_poisson_draws_take_the_noise_only_step_without_a_forward_pass():
    """q = 1/40: most of the 20 draws are empty (the first one too, at this seed). The audit takes the
    noise-only step for them, as the training loop does: every step is released and accounted, the model
    runs only on non-empty draws."""
    from torch.utils.data import TensorDataset

    from distsched.privacy.audit import audit_training

    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 4, generator=gen), torch.randint(0, 3, (40,), generator=gen))
    torch.manual_seed(0)
    model = _NoEmptyBatches()
    steps = 20
    empties: list[int] = []  # the forward passes done before each noise-only step

    def count_empty(training) -> None:
        inner = training.empty_step
        training.empty_step = lambda: (empties.append(model.forwards), inner())[1]

    report = audit_training({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5, "reproducible": True},
                            model, torch.optim.SGD(model.parameters(), lr=0.1), data, np.arange(40), batch_size=1,
                            total_steps=steps, seed=0, canaries=10, canary_seed=1, tamper=count_empty)
    assert report.steps == steps  # every draw is a step, empty or not
    assert empties[0] == 0  # the first draw was empty
    assert len(empties) + model.forwards == steps and model.forwards > 0  # the others reached the model
    expected_eps = epsilon_of([(1.0, 1 / 40, steps)], 1e-5)  # Opacus' RDP for 20 steps of (1, 1/40)
    assert report.epsilon_accountant == pytest.approx(expected_eps, rel=1e-9)
