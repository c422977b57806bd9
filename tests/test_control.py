"""Controllers against closed forms and torch's own ReduceLROnPlateau."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import lfilter

from distsched import schedules as S
from distsched.control import (
    Controlled,
    CurriculumPhases,
    GradientConflictScaler,
    PIDController,
    ReduceOnPlateau,
    WarmRestartOnPlateau,
    pairwise_cosines,
    task_gradients,
)

RNG = np.random.default_rng(0)
LOSSES = list(1.0 + 0.2 * RNG.standard_normal(60).cumsum() / 10)


# ---------------------------------------------------------------- PID
def test_pid_proportional_closed_form():
    kp = 0.7
    ctl = PIDController(kp=kp, min_factor=0.0, max_factor=10.0)
    ctl.update(LOSSES[0])
    for prev, cur in zip(LOSSES, LOSSES[1:]):
        f = ctl.update(cur)
        assert f == pytest.approx(min(max(1 - kp * (cur - prev), 0.0), 10.0), abs=1e-12)


def test_pid_integral_telescopes_to_total_change():
    # sum_{s<=t} (L_s - L_{s-1}) = L_t - L_0 while the output is not saturated
    ki = 0.3
    ctl = PIDController(kp=0.0, ki=ki, min_factor=0.0, max_factor=10.0)
    ctl.update(LOSSES[0])
    for cur in LOSSES[1:]:
        assert ctl.update(cur) == pytest.approx(1 - ki * (cur - LOSSES[0]), abs=1e-12)


def test_pid_derivative_closed_form():
    kd = 0.5
    ctl = PIDController(kp=0.0, kd=kd, min_factor=0.0, max_factor=10.0)
    errors = np.diff(LOSSES)
    ctl.update(LOSSES[0])
    assert ctl.update(LOSSES[1]) == pytest.approx(1.0)  # no derivative on the first error
    for k in range(1, len(errors)):
        assert ctl.update(LOSSES[k + 1]) == pytest.approx(1 - kd * (errors[k] - errors[k - 1]), abs=1e-12)


def test_pid_smoothing_matches_ema_filter():
    beta, kp = 0.8, 1.0
    x = np.asarray(LOSSES)
    # s_t = beta s_{t-1} + (1-beta) x_t with s_0 = x_0, written as an IIR filter with initial state
    ema, _ = lfilter([1 - beta], [1, -beta], x[1:], zi=[beta * x[0]])
    s = np.concatenate([[x[0]], ema])
    ctl = PIDController(kp=kp, smoothing=beta, min_factor=0.0, max_factor=10.0)
    got = [ctl.update(v) for v in x]
    assert got[0] == 1.0
    np.testing.assert_allclose(got[1:], 1 - kp * np.diff(s), atol=1e-12)


def test_pid_spike_lowers_next_lr_and_bounds_hold():
    ctl = PIDController(kp=2.0, min_factor=0.2, max_factor=1.0)
    lr = Controlled(S.constant(0.1), ctl)
    for loss in [1.0, 0.99, 0.98]:
        ctl.update(loss)
    before = lr(3)
    ctl.update(1.5)  # spike
    assert lr(4) < before
    assert lr(4) == pytest.approx(0.1 * 0.2)  # 1 - 2*0.52 < 0.2: clipped at min_factor
    ctl.update(0.9)  # falls again: the factor never exceeds max_factor
    assert lr(5) == pytest.approx(0.1)
    ctl.update(float("nan"))
    assert ctl.factor == 0.2


def test_pid_anti_windup_recovers_sooner():
    rise = [1.0 + 0.1 * k for k in range(30)]  # long rise saturates the output
    fall = [rise[-1] - 0.01 * k for k in range(1, 30)]
    kw = dict(kp=0.0, ki=2.0, min_factor=0.1, max_factor=1.0)
    with_aw, without = PIDController(**kw), PIDController(**kw, anti_windup=False)
    for v in rise:
        with_aw.update(v), without.update(v)
    # without anti-windup the integral is the full change L_t - L_0, with it it stops at saturation
    assert without.integral == pytest.approx(rise[-1] - rise[0])
    assert with_aw.integral < 0.5
    steps_to_leave = {}
    for name, ctl in (("aw", with_aw), ("no", without)):
        c = copy.deepcopy(ctl)
        for k, v in enumerate(fall):
            if c.update(v) > 0.1 + 1e-9:
                steps_to_leave[name] = k
                break
        else:
            steps_to_leave[name] = math.inf
    assert steps_to_leave["aw"] < steps_to_leave["no"]


def test_pid_state_dict_resume_is_identical():
    a = PIDController(kp=0.5, ki=0.1, kd=0.2, smoothing=0.5)
    for v in LOSSES[:20]:
        a.update(v)
    b = PIDController(kp=0.5, ki=0.1, kd=0.2, smoothing=0.5)
    b.load_state_dict(a.state_dict())
    assert [a.update(v) for v in LOSSES[20:]] == [b.update(v) for v in LOSSES[20:]]


@pytest.mark.parametrize(
    "kwargs, name",
    [({"kp": float("nan")}, "kp"), ({"min_factor": -1}, "min_factor"), ({"smoothing": 1.0}, "smoothing"),
     ({"min_factor": 0.5, "max_factor": 0.8}, "min_factor"), ({"integral_limit": 0}, "integral_limit")],
)
def test_pid_invalid_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PIDController(**kwargs)


# ---------------------------------------------------------------- plateau vs torch
def _torch_plateau_lrs(metrics, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    out = []
    for m in metrics:
        sched.step(m)
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="min", factor=0.5, patience=3, threshold=1e-2, threshold_mode="rel", cooldown=0),
        dict(mode="min", factor=0.3, patience=0, threshold=0.05, threshold_mode="abs", cooldown=2),
        dict(mode="max", factor=0.7, patience=2, threshold=1e-3, threshold_mode="rel", cooldown=1),
        dict(mode="min", factor=0.1, patience=4, threshold=0.0, threshold_mode="rel", cooldown=0, min_lr=1e-3),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reduce_on_plateau_matches_torch(kw, seed):
    rng = np.random.default_rng(seed)
    metrics = list(np.abs(1.0 + rng.standard_normal(120).cumsum() * 0.05 + 0.1 * rng.standard_normal(120)))
    ours_kw = {k: v for k, v in kw.items() if k != "min_lr"}
    ctl = ReduceOnPlateau(**ours_kw, min_factor=kw.get("min_lr", 0.0))
    got = [ctl.update(m) for m in metrics]
    np.testing.assert_allclose(got, _torch_plateau_lrs(metrics, **kw), rtol=1e-12)
    assert ctl.reductions > 0


def test_warm_restart_fires_where_torch_reduces_and_restarts_schedule():
    rng = np.random.default_rng(3)
    metrics = list(1.0 / (1 + np.arange(80) / 5) + 0.01 * rng.standard_normal(80))
    metrics[40:] = [metrics[39] + 0.001 * rng.standard_normal() for _ in range(40)]
    torch_lrs = _torch_plateau_lrs(metrics, patience=5, threshold=1e-2)
    first_reduce = next(i for i, v in enumerate(torch_lrs) if v < 1.0)
    ctl = WarmRestartOnPlateau(patience=5, threshold=1e-2, restart_decay=0.5)
    cos = S.cosine(lr=0.1, total_steps=200, min_lr=0.0)
    lr = Controlled(cos, ctl)
    fired = [ctl.update(m, step=t) for t, m in enumerate(metrics[: first_reduce + 1])]
    assert fired.index(True) == first_reduce and sum(fired) == 1
    for t in range(first_reduce + 1, first_reduce + 50):
        assert lr(t) == pytest.approx(0.5 * cos(t - first_reduce - 1), abs=1e-15)
    assert lr(first_reduce + 1) == pytest.approx(0.05)  # restarted at the peak, decayed by 0.5
    state = ctl.state_dict()
    other = WarmRestartOnPlateau(patience=5, threshold=1e-2, restart_decay=0.5)
    other.load_state_dict(state)
    assert Controlled(cos, other)(first_reduce + 7) == lr(first_reduce + 7)


def test_controlled_drives_scheduled_lr_and_resumes():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)  # the base: the schedule's peak
    cos = S.cosine(lr=0.2, total_steps=50)
    ctl = ReduceOnPlateau(factor=0.5, patience=1)
    sched = S.ScheduledLR(opt, Controlled(cos, ctl))
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8]
    for t, m in enumerate(metrics):
        assert opt.param_groups[0]["lr"] == pytest.approx(cos(t) * ctl.factor)
        ctl.update(m)
        sched.step()
    assert ctl.factor == 0.25
    ckpt = {"sched": sched.state_dict(), "ctl": ctl.state_dict()}
    opt2 = torch.optim.SGD(model.parameters(), lr=0.2)
    ctl2 = ReduceOnPlateau(factor=0.5, patience=1)
    sched2 = S.ScheduledLR(opt2, Controlled(cos, ctl2))
    ctl2.load_state_dict(ckpt["ctl"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(cos(8) * 0.25)


def test_controlled_rejects_non_controller():
    with pytest.raises(ValueError, match="controller"):
        Controlled(S.constant(0.1), object())


# ---------------------------------------------------------------- gradient conflict
def test_pairwise_cosines_match_numpy():
    rng = np.random.default_rng(1)
    vs = [rng.standard_normal(7) for _ in range(3)]
    ref = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for i, a in enumerate(vs) for b in vs[i + 1 :]]
    got = pairwise_cosines([torch.tensor(v) for v in vs])
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # per-parameter lists are flattened and concatenated
    split = [[torch.tensor(v[:3]), torch.tensor(v[3:]).reshape(2, 2)] for v in vs]
    np.testing.assert_allclose(pairwise_cosines(split), ref, rtol=1e-12)


def test_task_gradients_match_separate_backward():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x = torch.randn(8, 4)
    out = model(x)
    losses = [out[:, 0].pow(2).mean(), (out[:, 1] - 1).abs().mean()]
    grads = task_gradients(losses, list(model.parameters()))
    for k, build in enumerate([lambda o: o[:, 0].pow(2).mean(), lambda o: (o[:, 1] - 1).abs().mean()]):
        model.zero_grad()
        build(model(x)).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(grads[k], ref)


def test_conflict_scaler_reduces_only_while_conflicting():
    ctl = GradientConflictScaler(threshold=0.0, factor=0.3)
    lr = Controlled(S.constant(1.0), ctl)
    g = torch.tensor([1.0, 0.0])
    assert ctl.update([g, torch.tensor([1.0, 1.0])]) == 1.0  # cos = 0.707
    assert ctl.update([g, torch.tensor([-1.0, 0.2])]) == 0.3  # cos < 0
    assert lr(5) == pytest.approx(0.3) and ctl.cosine == pytest.approx(-1 / math.sqrt(1.04))
    assert ctl.update([g, torch.tensor([0.0, 1.0])]) == 1.0  # orthogonal: cos = 0 is not < 0
    strict = GradientConflictScaler(threshold=0.5, factor=0.5)
    assert strict.update([g, torch.tensor([1.0, 1.0])]) == 1.0 and strict.update([g, torch.tensor([1.0, 2.0])]) == 0.5
    with pytest.raises(ValueError, match="threshold"):
        GradientConflictScaler(threshold=1.5)
    with pytest.raises(ValueError, match="grads"):
        ctl.update([g])


# ---------------------------------------------------------------- curriculum
def test_curriculum_fixed_boundaries_closed_form():
    ctl = CurriculumPhases([1.0, 0.5, 0.1], spike_factor=0.8, spike_steps=3, boundaries=[10, 20])
    lr = Controlled(S.constant(0.2), ctl)
    expected = [0.2] * 10 + [0.1] * 10 + [0.16] * 3 + [0.02] * 7
    np.testing.assert_allclose([lr(t) for t in range(30)], expected, rtol=1e-12)


def test_curriculum_feedback_advances_on_plateau_with_spike():
    ctl = CurriculumPhases([1.0, 0.5, 0.1], spike_factor=2.0, spike_steps=2, patience=2, threshold=0.01)
    losses = [1.0, 0.8, 0.6, 0.6, 0.6, 0.6, 0.5, 0.5, 0.5, 0.5]
    phases = [ctl.update(v, step=t) for t, v in enumerate(losses)]
    # plateau after 3 bad evaluations (> patience=2): phase 1 from step 6, phase 2 from step 10
    assert phases == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert ctl.phase_starts == [0, 6, 10]
    assert [ctl.multiplier(t) for t in (5, 6, 9, 10, 11, 12)] == [1.0, 0.5, 0.5, 2.0, 2.0, 0.1]
    again = CurriculumPhases([1.0, 0.5, 0.1], spike_factor=2.0, spike_steps=2, patience=2, threshold=0.01)
    again.load_state_dict(ctl.state_dict())
    assert [again.multiplier(t) for t in range(14)] == [ctl.multiplier(t) for t in range(14)]


def test_curriculum_invalid():
    with pytest.raises(ValueError, match="boundaries"):
        CurriculumPhases([1.0, 0.5], boundaries=[3, 5])
    with pytest.raises(ValueError, match="phase_factors"):
        CurriculumPhases([1.0, -0.5])


# ---------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(
    losses=st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan")), st.just(float("inf"))), min_size=1,
                    max_size=40),
    kp=st.floats(-10, 10), ki=st.floats(-10, 10), kd=st.floats(-10, 10),
    lo=st.floats(0, 1), hi=st.floats(1, 5), beta=st.floats(0, 0.99),
)
def test_pid_factor_always_within_bounds(losses, kp, ki, kd, lo, hi, beta):
    ctl = PIDController(kp=kp, ki=ki, kd=kd, min_factor=lo, max_factor=hi, smoothing=beta, integral_limit=100.0)
    for v in losses:
        f = ctl.update(v)
        assert lo <= f <= hi and math.isfinite(f)


def test_controlled_pickles_with_its_state():
    import pickle

    ctl = PIDController(kp=1.0)
    ctl.update(1.0), ctl.update(1.2)
    lr = Controlled(S.cosine(lr=0.1, total_steps=10), ctl)
    again = pickle.loads(pickle.dumps(lr))
    assert again(3) == lr(3) and again.state_dict() == lr.state_dict()
