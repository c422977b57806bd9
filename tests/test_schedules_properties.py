"""Property tests (hypothesis): values stay within their documented bounds at any step (edge steps and
huge ones included), monotone decays are monotone, schedules pickle, and invalid parameters raise
ValueError naming the parameter."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distsched import schedules as S

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-12  # relative slack for rounding at the bounds

lrs = st.floats(1e-6, 10.0)
fracs = st.floats(0.0, 1.0)
steps_small = st.integers(1, 500)
steps_any = st.lists(st.integers(0, 10**9), min_size=1, max_size=12)


@st.composite
def lr_min(draw):
    lr = draw(lrs)
    return lr, lr * draw(fracs)


@st.composite
def case(draw, name: str):
    """(schedule, low, high, monotone_nonincreasing, horizon) for a catalogue entry."""
    if name == "constant":
        lr = draw(st.floats(0.0, 10.0))
        return S.Constant(lr), lr, lr, True, 10
    if name == "step":
        lr, g = draw(lrs), draw(st.floats(1e-3, 1.0))
        return S.Step(lr, draw(steps_small), g), 0.0, lr, True, 1000
    if name == "multistep":
        lr, g = draw(lrs), draw(st.floats(1e-3, 1.0))
        ms = sorted(draw(st.sets(st.integers(1, 1000), min_size=1, max_size=6)))
        return S.MultiStep(lr, tuple(ms), g), 0.0, lr, True, 1100
    if name == "exponential":
        lr = draw(lrs)
        return S.Exponential(lr, draw(st.floats(0.5, 1.0))), 0.0, lr, True, 1000
    if name == "inverse_time":
        lr = draw(lrs)
        return S.InverseTime(lr, draw(st.floats(0.0, 10.0))), 0.0, lr, True, 1000
    if name == "inverse_power":
        lr = draw(lrs)
        return S.InversePower(lr, draw(st.floats(0.05, 3.0))), 0.0, lr, True, 1000
    if name == "polynomial":
        lr, lo = draw(lr_min())
        return S.Polynomial(lr, draw(steps_small), draw(st.floats(0.1, 5.0)), lo), lo, lr, True, 600
    if name == "linear":
        lr, a, b = draw(lrs), draw(fracs), draw(fracs)
        return S.Linear(lr, draw(steps_small), a, b), lr * min(a, b), lr * max(a, b), a >= b, 600
    if name == "inverse_sqrt":
        lr = draw(lrs)
        return S.InverseSqrt(lr, draw(st.floats(0.5, 1e4))), 0.0, lr, True, 1000
    if name == "cosine":
        lr, lo = draw(lr_min())
        return S.Cosine(lr, draw(steps_small), lo), lo, lr, True, 600
    if name == "cosine_restarts":
        lr, lo = draw(lr_min())
        sched = S.CosineRestarts(lr, draw(steps_small), draw(st.integers(1, 4)), lo, draw(st.floats(0.01, 1.0)))
        return sched, lo, lr, False, 2000
    if name == "cyclic":
        lr, lo = draw(lr_min())
        mode = draw(st.sampled_from(["triangular", "triangular2", "exp_range"]))
        down = draw(st.none() | steps_small)
        sched = S.Cyclic(lr, draw(steps_small), lo, down, mode, draw(st.floats(0.9, 1.0)))
        return sched, lo, lr, False, 2000
    if name == "one_cycle":
        lr = draw(lrs)
        total = draw(st.integers(100, 2000))
        div, final = draw(st.floats(1.0, 100.0)), draw(st.floats(1.0, 1e5))
        pct = draw(st.floats(0.05, 0.45))
        sched = S.OneCycle(lr, total, pct, div, final, draw(st.sampled_from(["cos", "linear"])), draw(st.booleans()))
        return sched, lr / div / final, lr, False, total + 10
    if name == "wsd":
        lr, lo = draw(lr_min())
        total = draw(st.integers(2, 2000))
        decay = draw(st.integers(1, total))
        warm = draw(st.integers(0, total - decay))
        sched = S.WarmupStableDecay(lr, total, decay, warm, lo, draw(st.sampled_from(["linear", "cosine", "1-sqrt"])))
        return sched, 0.0, lr, False, total + 10
    if name == "warmup":
        inner, lo, hi, _, h = draw(case("cosine"))
        w = draw(st.integers(0, inner.total_steps - 1))  # total_steps counts the warmup
        mode = draw(st.sampled_from(["linear", "exponential"]))
        sf = draw(st.floats(1e-3, 1.0))
        return S.Warmup(inner, w, sf, mode), 0.0, hi, False, h + w
    if name == "join":
        a, lo1, hi1, _, h1 = draw(case("cosine"))
        b, lo2, hi2, _, h2 = draw(case("step"))
        return S.Join((a, b), (draw(st.integers(1, 1000)),)), min(lo1, lo2), max(hi1, hi2), False, 2000
    if name == "scale":
        inner, lo, hi, mono, h = draw(case("exponential"))
        f = draw(st.floats(0.0, 10.0))
        return S.Scale(inner, f), lo * f, hi * f, mono, h
    if name == "clamp":
        inner, lo, hi, mono, h = draw(case("inverse_time"))
        a = draw(st.floats(0.0, 1.0)) * hi
        b = a + draw(st.floats(0.0, 1.0)) * hi
        return S.Clamp(inner, a, b), a, b, mono, h
    if name == "repeat":
        inner, lo, hi, _, h = draw(case("polynomial"))
        return S.Repeat(inner, draw(steps_small)), lo, hi, False, h
    if name == "phase_shift":
        inner, lo, hi, _, h = draw(case("cyclic"))
        return S.PhaseShift(inner, draw(st.floats(0.0, 0.999))), lo, hi, False, h
    if name == "linear_beta":
        a, b = draw(st.floats(1e-6, 0.5)), draw(st.floats(1e-6, 0.5))
        return S.LinearBeta(draw(steps_small), a, b), min(a, b), max(a, b), a >= b, 600
    if name == "cosine_beta":
        m = draw(st.floats(0.01, 0.999))
        return S.CosineBeta(draw(steps_small), draw(st.floats(1e-4, 0.1)), m), 0.0, m, False, 600
    if name == "diffusion_coupled":
        lr = draw(lrs)
        noise = draw(st.sampled_from([S.LinearBeta(300, 1e-4, 0.9), S.CosineBeta(300)]))
        return S.DiffusionCoupled(lr, noise), lr / 2, lr, False, 400
    if name == "curriculum_spike":
        lr = draw(lrs)
        spike = lr * draw(st.floats(1.0, 5.0))
        b1 = draw(st.integers(1, 200))
        b2 = b1 + draw(st.integers(1, 200))
        phases = (S.Constant(lr / 2), S.Constant(lr), S.Cosine(lr, draw(steps_small)))
        return S.CurriculumSpike(phases, (b1, b2), spike, draw(st.integers(0, 50))), 0.0, spike, False, 700
    raise AssertionError(name)


def _within(v: float, lo: float, hi: float) -> bool:
    return math.isfinite(v) and lo - TOL * abs(lo) <= v <= hi + TOL * abs(hi)


@pytest.mark.parametrize("name", list(S.CATALOGUE))
def test_values_within_documented_bounds(name):
    @SETTINGS
    @given(case(name), steps_any)
    def check(c, far):
        sched, lo, hi, monotone, horizon = c
        grid = sorted({0, 1, horizon - 1, horizon, horizon + 1, *range(0, horizon, max(1, horizon // 50)), *far})
        values = [sched(t) for t in grid]
        for t, v in zip(grid, values):
            assert isinstance(v, float), (t, v)
            assert _within(v, lo, hi), f"{sched!r} at step {t}: {v} not in [{lo}, {hi}]"
        if monotone:
            for (t0, a), (t1, b) in zip(zip(grid, values), zip(grid[1:], values[1:])):
                assert b <= a * (1 + TOL) + 1e-300, f"{sched!r} rose from {a} at {t0} to {b} at {t1}"
        assert pickle.loads(pickle.dumps(sched)) == sched
        assert S.from_spec(S.to_spec(sched)) == sched

    check()


INVALID = [
    (S.Constant, {"lr": -0.1}, "lr"),
    (S.Constant, {"lr": math.nan}, "lr"),
    (S.Step, {"lr": 0.1, "step_size": 0}, "step_size"),
    (S.Step, {"lr": 0.1, "step_size": 10, "gamma": 0.0}, "gamma"),
    (S.MultiStep, {"lr": 0.1, "milestones": (30, 20)}, "milestones"),
    (S.MultiStep, {"lr": 0.1, "milestones": (0, 20)}, r"milestones\[0\]"),
    (S.Exponential, {"lr": 0.0, "gamma": 0.9}, "lr"),
    (S.Exponential, {"lr": 0.1, "gamma": -0.9}, "gamma"),
    (S.InverseTime, {"lr": 0.1, "decay_rate": -1.0}, "decay_rate"),
    (S.InversePower, {"lr": 0.1, "power": 0.0}, "power"),
    (S.Polynomial, {"lr": 0.1, "total_steps": 10, "power": -1.0}, "power"),
    (S.Polynomial, {"lr": 0.1, "total_steps": 10, "min_lr": 0.5}, "min_lr"),
    (S.Linear, {"lr": 0.1, "total_steps": 10, "start_factor": 1.5}, "start_factor"),
    (S.Linear, {"lr": 0.1, "total_steps": 10, "end_factor": -0.1}, "end_factor"),
    (S.InverseSqrt, {"lr": 0.1, "timescale": 0.0}, "timescale"),
    (S.Cosine, {"lr": 0.1, "total_steps": 2.5}, "total_steps"),
    (S.Cosine, {"lr": math.inf, "total_steps": 10}, "lr"),
    (S.CosineRestarts, {"lr": 0.1, "cycle_steps": 0}, "cycle_steps"),
    (S.CosineRestarts, {"lr": 0.1, "cycle_steps": 10, "cycle_mult": 0}, "cycle_mult"),
    (S.CosineRestarts, {"lr": 0.1, "cycle_steps": 10, "cycle_decay": 1.5}, "cycle_decay"),
    (S.Cyclic, {"lr": 0.1, "step_size_up": 10, "min_lr": 0.2}, "min_lr"),
    (S.Cyclic, {"lr": 0.1, "step_size_up": 10, "mode": "sawtooth"}, "mode"),
    (S.Cyclic, {"lr": 0.1, "step_size_up": 10, "step_size_down": 0}, "step_size_down"),
    (S.Cyclic, {"lr": 0.1, "step_size_up": 10, "gamma": 0.0}, "gamma"),
    (S.OneCycle, {"lr": 0.1, "total_steps": 100, "pct_start": 1.0}, "pct_start"),
    (S.OneCycle, {"lr": 0.1, "total_steps": 100, "div_factor": 0.5}, "div_factor"),
    (S.OneCycle, {"lr": 0.1, "total_steps": 100, "anneal": "exp"}, "anneal"),
    (S.OneCycle, {"lr": 0.1, "total_steps": 100, "three_phase": "yes"}, "three_phase"),
    (S.OneCycle, {"lr": 0.1, "total_steps": 3, "pct_start": 0.1}, "pct_start"),
    (S.WarmupStableDecay, {"lr": 0.1, "total_steps": 100, "decay_steps": 80, "warmup_steps": 30}, "warmup_steps"),
    (S.WarmupStableDecay, {"lr": 0.1, "total_steps": 100, "decay_steps": 10, "decay": "exp"}, "decay"),
    (S.Warmup, {"schedule": S.Constant(0.1), "warmup_steps": -1}, "warmup_steps"),
    (S.Warmup, {"schedule": S.Constant(0.1), "warmup_steps": 5, "mode": "exponential"}, "start_factor"),
    (S.Join, {"schedules": (S.Constant(0.1), S.Constant(0.2)), "boundaries": ()}, "boundaries"),
    (S.Scale, {"schedule": S.Constant(0.1), "factor": -2.0}, "factor"),
    (S.Clamp, {"schedule": S.Constant(0.1), "min_lr": 0.5, "max_lr": 0.1}, "max_lr"),
    (S.Repeat, {"schedule": S.Constant(0.1), "period": 0}, "period"),
    (S.PhaseShift, {"schedule": S.Cyclic(0.1, 10), "phase": 1.0}, "phase"),
    (S.PhaseShift, {"schedule": S.Constant(0.1)}, "period"),
    (S.LinearBeta, {"total_steps": 10, "beta_end": 1.0}, "beta_end"),
    (S.CosineBeta, {"total_steps": 0}, "total_steps"),
    (S.DiffusionCoupled, {"lr": 0.1, "noise": 0.02}, "noise"),
    (S.CurriculumSpike, {"phases": (S.Constant(0.1),), "boundaries": (), "spike_lr": 0.2}, "phases"),
    (S.CurriculumSpike, {"phases": (S.Constant(0.1), S.Constant(0.1)), "boundaries": (5,), "spike_lr": 0}, "spike_lr"),
]


def test_invalid_table_covers_the_catalogue():
    assert {cls for cls, _, _ in INVALID} == set(S.CATALOGUE.values())


@pytest.mark.parametrize(("cls", "kwargs", "param"), INVALID, ids=[f"{c.__name__}-{p}" for c, _, p in INVALID])
def test_invalid_parameters_raise_naming_the_parameter(cls, kwargs, param):
    with pytest.raises(ValueError, match=param):
        cls(**kwargs)


@SETTINGS
@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 0))
def test_any_non_positive_or_non_finite_total_steps_or_lr_raises(bad):
    if isinstance(bad, float) and math.isfinite(bad) and bad > 0:
        return  # a valid lr: nothing to refuse
    with pytest.raises(ValueError, match="lr"):
        S.Cosine(lr=bad, total_steps=10)
    if not (isinstance(bad, float) and bad.is_integer() and bad >= 1):
        with pytest.raises(ValueError, match="total_steps"):
            S.Cosine(lr=0.1, total_steps=bad)
