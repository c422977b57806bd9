"""Every schedule that torch also has matches torch's own scheduler to 1e-9 relative over >= 1000 steps.

torch's reference values come from stepping its schedulers on a real optimizer (its recursive forms
included); ours are closed forms. Parameters keep values away from 0 (``min_lr > 0`` where torch has an
``eta_min``) so that a relative tolerance of 1e-9 is meaningful.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as L

from distsched import schedules as S

LR = 0.1


def _opt(lrs=(LR,)) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs], lr=LR)


def torch_lrs(make, steps: int, lrs=(LR,)) -> list[list[float]]:
    """Per-step learning rates of torch's scheduler (read before each ``step``, as a training loop sees them)."""
    opt = _opt(lrs)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def assert_close(ours: list[float], ref: list[float], rel: float = 1e-9) -> None:
    assert len(ours) == len(ref)
    for t, (a, b) in enumerate(zip(ours, ref)):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=0.0), f"step {t}: ours {a!r} torch {b!r}"


CASES = {
    "StepLR": (lambda o: L.StepLR(o, step_size=100, gamma=0.5), S.Step(LR, step_size=100, gamma=0.5), 1200),
    "MultiStepLR": (
        lambda o: L.MultiStepLR(o, milestones=[300, 600, 900], gamma=0.3),
        S.MultiStep(LR, milestones=(300, 600, 900), gamma=0.3),
        1200,
    ),
    "ExponentialLR": (lambda o: L.ExponentialLR(o, gamma=0.997), S.Exponential(LR, gamma=0.997), 1200),
    "CosineAnnealingLR": (
        lambda o: L.CosineAnnealingLR(o, T_max=1200, eta_min=1e-3),
        S.Cosine(LR, total_steps=1200, min_lr=1e-3),
        1201,  # up to and including T_max; past it torch goes back up, ours holds (tested below)
    ),
    "CosineAnnealingWarmRestarts-mult1": (
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=70, T_mult=1, eta_min=1e-3),
        S.CosineRestarts(LR, cycle_steps=70, cycle_mult=1, min_lr=1e-3),
        1500,
    ),
    "CosineAnnealingWarmRestarts-mult2": (
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2, eta_min=1e-3),
        S.CosineRestarts(LR, cycle_steps=10, cycle_mult=2, min_lr=1e-3),
        3000,
    ),
    "CosineAnnealingWarmRestarts-mult3": (
        lambda o: L.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=3, eta_min=1e-3),
        S.CosineRestarts(LR, cycle_steps=7, cycle_mult=3, min_lr=1e-3),
        2000,
    ),
    "CyclicLR-triangular": (
        lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=LR, step_size_up=100, step_size_down=150, cycle_momentum=False),
        S.Cyclic(LR, step_size_up=100, min_lr=1e-3, step_size_down=150),
        1200,
    ),
    "CyclicLR-triangular2": (
        lambda o: L.CyclicLR(o, base_lr=1e-3, max_lr=LR, step_size_up=80, mode="triangular2", cycle_momentum=False),
        S.Cyclic(LR, step_size_up=80, min_lr=1e-3, mode="triangular2"),
        1200,
    ),
    "CyclicLR-exp_range": (
        lambda o: L.CyclicLR(
            o, base_lr=1e-3, max_lr=LR, step_size_up=50, mode="exp_range", gamma=0.999, cycle_momentum=False
        ),
        S.Cyclic(LR, step_size_up=50, min_lr=1e-3, mode="exp_range", gamma=0.999),
        1200,
    ),
    "OneCycleLR-cos": (
        lambda o: L.OneCycleLR(o, max_lr=LR, total_steps=1000, pct_start=0.25, cycle_momentum=False),
        S.OneCycle(LR, total_steps=1000, pct_start=0.25),
        1000,  # torch raises past total_steps
    ),
    "OneCycleLR-linear": (
        lambda o: L.OneCycleLR(
            o, max_lr=LR, total_steps=1200, pct_start=0.3, anneal_strategy="linear", div_factor=10.0,
            final_div_factor=100.0, cycle_momentum=False,
        ),
        S.OneCycle(LR, total_steps=1200, pct_start=0.3, anneal="linear", div_factor=10.0, final_div_factor=100.0),
        1200,
    ),
    "OneCycleLR-three_phase": (
        lambda o: L.OneCycleLR(o, max_lr=LR, total_steps=1001, pct_start=0.2, three_phase=True, cycle_momentum=False),
        S.OneCycle(LR, total_steps=1001, pct_start=0.2, three_phase=True),
        1001,
    ),
    "PolynomialLR": (
        lambda o: L.PolynomialLR(o, total_iters=1000, power=2.0),
        S.Polynomial(LR, total_steps=1000, power=2.0),
        1000,  # after total_iters both are exactly 0 (checked below)
    ),
    "PolynomialLR-sqrt": (
        lambda o: L.PolynomialLR(o, total_iters=1100, power=0.5),
        S.Polynomial(LR, total_steps=1100, power=0.5),
        1100,
    ),
    "LinearLR-up": (
        lambda o: L.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=1000),
        S.Linear(LR, total_steps=1000, start_factor=0.1, end_factor=1.0),
        1200,
    ),
    "LinearLR-down": (
        lambda o: L.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=1000),
        S.Linear(LR, total_steps=1000, start_factor=1.0, end_factor=0.05),
        1200,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_schedule_matches_torch(case):
    make, ours, steps = CASES[case]
    assert steps >= 1000
    ref = [g[0] for g in torch_lrs(make, steps)]
    assert_close([ours(t) for t in range(steps)], ref)


@pytest.mark.parametrize("case", ["StepLR", "CosineAnnealingWarmRestarts-mult2", "OneCycleLR-cos", "LinearLR-up"])
def test_adapter_with_multipliers_matches_torch_groups(case):
    """ScheduledLR with multipliers (1, 0.5, 0.25) equals torch's scheduler on groups with those base lrs."""
    make, ours, steps = CASES[case]
    mults = (1.0, 0.5, 0.25)
    if case.startswith("CosineAnnealingWarmRestarts"):  # eta_min is not proportional to the base lr
        make = lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2)  # noqa: E731
        ours = S.CosineRestarts(LR, cycle_steps=10, cycle_mult=2)
    if case.startswith("OneCycle"):
        make = lambda o: L.OneCycleLR(  # noqa: E731
            o, max_lr=[LR * m for m in mults], total_steps=1000, pct_start=0.25, cycle_momentum=False
        )
    ref = torch_lrs(make, steps, lrs=tuple(LR * m for m in mults))
    opt = _opt(lrs=(LR,) * 3)
    sched = S.ScheduledLR(opt, ours, multipliers=list(mults))
    got = []
    for _ in range(steps):
        got.append([g["lr"] for g in opt.param_groups])
        assert sched.get_last_lr() == got[-1]
        opt.step()
        sched.step()
    for i in range(3):
        assert_close([g[i] for g in got], [r[i] for r in ref])


def test_documented_differences_past_the_horizon():
    # torch's CosineAnnealingLR keeps going past T_max (back up); ours holds at min_lr
    ref = [g[0] for g in torch_lrs(lambda o: L.CosineAnnealingLR(o, T_max=100, eta_min=1e-3), 150)]
    ours = S.Cosine(LR, total_steps=100, min_lr=1e-3)
    assert ref[149] > ref[100] * 10
    assert all(ours(t) == 1e-3 for t in range(100, 10_000, 97))
    # polynomial: both exactly 0 after total_steps
    ref = [g[0] for g in torch_lrs(lambda o: L.PolynomialLR(o, total_iters=100, power=2.0), 130)]
    assert ref[100:] == [0.0] * 30
    assert [S.Polynomial(LR, 100, power=2.0)(t) for t in range(100, 130)] == [0.0] * 30
    # one-cycle: torch refuses steps past total_steps; ours holds the final value
    oc = S.OneCycle(LR, total_steps=100)
    assert oc(10**9) == oc(99) == pytest.approx(LR / 25 / 1e4, rel=1e-9)
    with pytest.raises(ValueError):
        torch_lrs(lambda o: L.OneCycleLR(o, max_lr=LR, total_steps=100), 103)
