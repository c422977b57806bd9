"""Planner and noise schedules against Opacus' accountants, Opacus' noise schedulers and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.schedulers import ExponentialNoise as OpacusExponentialNoise
from opacus.schedulers import StepNoise as OpacusStepNoise

from distsched.privacy import (
    Accountant,
    ConstantNoise,
    ExponentialNoise,
    LinearNoise,
    NoiseScheduler,
    PiecewiseNoise,
    StepNoise,
    noise_schedule_from_spec,
    plan,
    scale_batch_and_noise,
    steps_for_epochs,
)


def _opacus_eps(history, delta, mechanism):
    acc = RDPAccountant() if mechanism == "rdp" else PRVAccountant()
    acc.history = [tuple(s) for s in history]
    return acc.get_epsilon(delta=delta)


# -- noise schedules ------------------------------------------------------------------------


def test_step_noise_matches_opacus_step_noise():
    model = torch.nn.Linear(2, 1)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=2.0, max_grad_norm=1.0,
                      expected_batch_size=4)
    ref = OpacusStepNoise(opt, step_size=3, gamma=0.7)  # applies epoch 0 at construction
    ours = StepNoise(sigma=2.0, gamma=0.7, step_size=3)
    for t in range(12):
        assert ours(t) == pytest.approx(opt.noise_multiplier, rel=1e-12), t
        ref.step()


def test_exponential_noise_matches_opacus_exponential_noise():
    model = torch.nn.Linear(2, 1)
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.5, max_grad_norm=1.0,
                      expected_batch_size=4)
    total, ratio = 10, 0.4
    ref = OpacusExponentialNoise(opt, gamma=ratio ** (1 / total))
    ours = ExponentialNoise(sigma=1.5, ratio=ratio, total_steps=total)
    for t in range(total + 1):
        assert ours(t) == pytest.approx(opt.noise_multiplier, rel=1e-12), t
        ref.step()


@pytest.mark.parametrize(
    ("sched", "expected"),
    [
        # linear 2 -> 0.5*2 over T=4: 2, 1.75, 1.5, 1.25, 1.0, then held
        (LinearNoise(sigma=2.0, ratio=0.5, total_steps=4), [2.0, 1.75, 1.5, 1.25, 1.0, 1.0]),
        # held for interval=2 steps
        (LinearNoise(sigma=2.0, ratio=0.5, total_steps=4, interval=2), [2.0, 2.0, 1.5, 1.5, 1.0, 1.0]),
        # piecewise factors 1.2 / 1 / 0.5 at boundaries 2, 4
        (PiecewiseNoise(sigma=1.0, factors=(1.2, 1.0, 0.5), boundaries=(2, 4)), [1.2, 1.2, 1.0, 1.0, 0.5, 0.5]),
        (ConstantNoise(sigma=0.8), [0.8] * 6),
    ],
)
def test_noise_schedule_tables(sched, expected):
    assert [sched(t) for t in range(6)] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "sched",
    [
        ConstantNoise(1.1),
        StepNoise(1.0, 0.8, 7),
        ExponentialNoise(1.0, 0.3, total_steps=40, interval=5),
        LinearNoise(1.0, 0.2, total_steps=40, interval=3),
        PiecewiseNoise(1.0, (1.5, 1.0, 0.7), (10, 33)),
    ],
)
def test_segments_are_the_run_length_encoding_of_the_values(sched):
    total = 45
    expanded = [s.noise_multiplier for s in sched.segments(total, 0.1) for _ in range(s.steps)]
    assert expanded == [sched(t) for t in range(total)]
    assert all(s.sample_rate == 0.1 for s in sched.segments(total, 0.1))


def test_noise_spec_parsing_and_errors():
    s = noise_schedule_from_spec("piecewise:factors=1.2/1/0.8,boundaries=300/600", total_steps=1000)
    assert s == PiecewiseNoise(1.0, (1.2, 1.0, 0.8), (300, 600))
    e = noise_schedule_from_spec("exponential:ratio=0.5", total_steps=900, interval=25)
    assert e == ExponentialNoise(1.0, 0.5, 900, 25)
    assert noise_schedule_from_spec(None, total_steps=5) == ConstantNoise(1.0)
    with pytest.raises(ValueError, match="noise_schedule must be one of"):
        noise_schedule_from_spec("cosine", total_steps=5)
    with pytest.raises(ValueError, match="ratio"):
        noise_schedule_from_spec("linear:ratio=-1", total_steps=5)
    with pytest.raises(ValueError, match="key=value"):
        noise_schedule_from_spec("step:nope=1", total_steps=5)


def test_noise_scheduler_drives_dp_optimizer_and_accountant_sees_every_change():
    torch.manual_seed(0)
    sched = StepNoise(sigma=1.5, gamma=0.8, step_size=4)
    q, batch = 0.1, 10
    model = GradSampleModule(torch.nn.Linear(3, 1))
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), noise_multiplier=99.0, max_grad_norm=1.0,
                      expected_batch_size=batch)
    acc = Accountant("rdp")
    opt.attach_step_hook(acc.optimizer_hook(q))
    noise = NoiseScheduler(opt, sched)
    used = []
    for _ in range(11):
        x, y = torch.randn(batch, 3), torch.randn(batch, 1)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        used.append(opt.noise_multiplier)
        opt.step()
        noise.step()
    assert used == [sched(t) for t in range(11)]
    assert acc.history == sched.segments(11, q)
    assert acc.epsilon(1e-5) == pytest.approx(_opacus_eps(sched.segments(11, q), 1e-5, "rdp"), rel=1e-12)


# -- planner --------------------------------------------------------------------------------


def test_plan_noise_rdp_is_conservative_tight_and_beats_opacus_search():
    p = plan(target_epsilon=8.0, delta=1e-5, sample_rate=0.04, epochs=90)
    assert p.steps == 2250 and p.solved == "noise"
    eps = _opacus_eps([(p.noise_multiplier, 0.04, 2250)], 1e-5, "rdp")
    assert eps == pytest.approx(p.epsilon, rel=1e-9)
    assert 8.0 - 1e-3 <= eps <= 8.0
    ref = get_noise_multiplier(target_epsilon=8.0, target_delta=1e-5, sample_rate=0.04, steps=2250)
    assert p.noise_multiplier <= ref  # tighter: no more noise than Opacus' answer for the same target


def test_plan_noise_prv():
    p = plan(target_epsilon=2.0, delta=1e-5, sample_rate=0.02, steps=300, accountant="prv")
    eps = _opacus_eps([(p.noise_multiplier, 0.02, 300)], 1e-5, "prv")
    assert eps == pytest.approx(p.epsilon, rel=1e-9)
    assert 2.0 - 1e-3 <= eps <= 2.0


def test_plan_noise_with_a_schedule_meets_the_budget_exactly():
    p = plan(target_epsilon=3.0, delta=1e-5, sample_rate=0.05, steps=200,
             noise_schedule="piecewise:factors=1.5/1/0.7,boundaries=60/130")
    hist = p.history()
    assert [s.steps for s in hist] == [60, 70, 70]
    assert [s.noise_multiplier for s in hist] == pytest.approx([1.5 * p.noise_multiplier, p.noise_multiplier,
                                                                0.7 * p.noise_multiplier], rel=1e-12)
    eps = _opacus_eps(hist, 1e-5, "rdp")
    assert 3.0 - 1e-3 <= eps <= 3.0


def test_plan_steps_is_the_largest_that_fits():
    p = plan(target_epsilon=2.0, delta=1e-5, sample_rate=0.01, noise_multiplier=1.0)
    assert p.solved == "steps"
    assert _opacus_eps([(1.0, 0.01, p.steps)], 1e-5, "rdp") <= 2.0
    assert _opacus_eps([(1.0, 0.01, p.steps + 1)], 1e-5, "rdp") > 2.0


def test_plan_batch_is_the_largest_that_fits_at_fixed_epochs():
    n = 10_000
    p = plan(target_epsilon=2.0, delta=1e-5, dataset_size=n, epochs=5, noise_multiplier=1.0)
    assert p.solved == "batch"
    b = p.batch_size

    def eps_of(bs):
        q = bs / n
        return _opacus_eps([(1.0, q, steps_for_epochs(5, q))], 1e-5, "rdp")

    assert eps_of(b) <= 2.0 < eps_of(b + 1)
    assert p.sample_rate == b / n and p.steps == steps_for_epochs(5, b / n)


def test_plan_epsilon_equals_opacus():
    p = plan(delta=1e-5, batch_size=256, dataset_size=60_000, epochs=2, noise_multiplier=1.1)
    assert p.solved == "epsilon"
    assert p.epsilon == pytest.approx(_opacus_eps([(1.1, 256 / 60_000, p.steps)], 1e-5, "rdp"), rel=1e-12)
    assert p.steps == math.ceil(2 / (256 / 60_000))


def test_steps_for_epochs_is_conservative():
    assert steps_for_epochs(90, 0.04) == 2250  # Opacus' int(90 / 0.04) gives 2249
    assert steps_for_epochs(1, 0.3) == 4


def test_infeasible_targets_say_what_is_reachable():
    with pytest.raises(ValueError, match="reachable: target_epsilon >="):
        plan(target_epsilon=1e-3, delta=1e-5, sample_rate=0.5, noise_multiplier=0.5)
    with pytest.raises(ValueError, match="not reachable with noise_multiplier"):
        plan(target_epsilon=1e-3, delta=1e-10, sample_rate=1.0, steps=10**6)
    with pytest.raises(ValueError, match="reachable"):
        plan(target_epsilon=1e-4, delta=1e-5, dataset_size=100, epochs=1, noise_multiplier=0.3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_epsilon": 1.0, "delta": 1.5, "sample_rate": 0.1, "steps": 10}, "delta"),
        ({"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.0, "steps": 10}, "sample_rate"),
        ({"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10, "epochs": 1}, "steps"),
        ({"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10, "noise_multiplier": 1.0}, "one of"),
        ({"delta": 1e-5, "sample_rate": 0.1, "steps": 10, "noise_multiplier": -1.0}, "noise_multiplier"),
        ({"target_epsilon": -1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10}, "target_epsilon"),
        ({"target_epsilon": 1.0, "delta": 1e-5, "batch_size": 10, "steps": 10}, "dataset_size"),
        ({"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10, "accountant": "x"}, "accountant"),
    ],
)
def test_invalid_plans_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(**kwargs)


def test_batch_noise_scaling_keeps_noise_std_and_reports_epsilon():
    rows = scale_batch_and_noise(batch_size=64, noise_multiplier=0.8, dataset_size=6400, steps=500, delta=1e-5,
                                 factors=(0.5, 1.0, 2.0, 4.0))
    assert [r["batch_size"] for r in rows] == [32, 64, 128, 256]
    for r in rows:
        assert r["noise_std_over_clip"] == pytest.approx(0.8 / 64, rel=1e-12)
        assert r["epsilon"] == pytest.approx(
            _opacus_eps([(r["noise_multiplier"], r["sample_rate"], 500)], 1e-5, "rdp"), rel=1e-12)
    # the known effect of the rule: larger batches with proportional noise spend less epsilon
    eps = [r["epsilon"] for r in rows]
    assert eps == sorted(eps, reverse=True)


@pytest.mark.parametrize(
    ("target", "delta", "q", "steps", "schedule"),
    [
        (0.3, 1e-6, 0.2, 50, None),
        (1.0, 1e-5, 0.001, 20_000, None),
        (4.0, 1e-5, 0.05, 1000, "exponential:ratio=0.3,interval=100"),
        (2.0, 1e-5, 0.02, 700, "linear:ratio=0.5,interval=70"),
        (6.0, 1e-7, 0.1, 40, "step:gamma=0.8,step_size=10"),
        (20.0, 1e-5, 1.0, 10, None),
    ],
)
def test_plan_noise_is_conservative_and_tight_over_a_grid(target, delta, q, steps, schedule):
    p = plan(target_epsilon=target, delta=delta, sample_rate=q, steps=steps, noise_schedule=schedule)
    eps = _opacus_eps(p.history(), delta, "rdp")
    assert target - 1e-3 <= eps <= target
    assert sum(s.steps for s in p.history()) == steps


def test_calibrate_functions_are_what_plan_dispatches_to():
    """``plan`` is a thin dispatcher: each ``calibrate_*`` gives the same Plan for the same question."""
    from distsched.privacy import calibrate_batch, calibrate_epsilon, calibrate_noise, calibrate_steps, epsilon

    common = {"delta": 1e-5, "noise_schedule": "step:gamma=0.8,step_size=100", "accountant": "rdp"}
    assert calibrate_noise(target_epsilon=3.0, sample_rate=0.02, steps=300, **common) == plan(
        target_epsilon=3.0, sample_rate=0.02, steps=300, **common)
    assert calibrate_steps(target_epsilon=3.0, sample_rate=0.02, noise_multiplier=1.1, **common) == plan(
        target_epsilon=3.0, sample_rate=0.02, noise_multiplier=1.1, **common)
    assert calibrate_batch(target_epsilon=3.0, dataset_size=5000, steps=300, noise_multiplier=1.1, **common) == plan(
        target_epsilon=3.0, dataset_size=5000, steps=300, noise_multiplier=1.1, **common)
    e = calibrate_epsilon(sample_rate=0.02, steps=300, noise_multiplier=1.1, **common)
    assert e == plan(sample_rate=0.02, steps=300, noise_multiplier=1.1, **common)
    assert e.epsilon == epsilon(e.history(), 1e-5)
