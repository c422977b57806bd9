"""Closed-form tables for the schedules torch has no twin for: composition, the Robbins-Monro family,
inverse sqrt, WSD, SGDR's per-cycle decay, and the coupled schedules (against numpy references)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distsched import schedules as S


def test_warmup_linear_and_exponential_tables():
    lin = S.Warmup(S.Constant(0.4), warmup_steps=4, start_factor=0.0)
    # step: 0 -> 0, 1 -> 0.1, 2 -> 0.2, 3 -> 0.3, then the wrapped schedule's value
    assert lin.values(6) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4], rel=1e-15)
    exp = S.Warmup(S.Constant(1.0), warmup_steps=2, start_factor=0.01, mode="exponential")
    # f^(1 - t/W): 0.01, 0.1, then 1
    assert exp.values(4) == pytest.approx([0.01, 0.1, 1.0, 1.0], rel=1e-12)
    inner = S.Exponential(1.0, 0.5)
    shifted = S.Warmup(inner, warmup_steps=10)
    assert [shifted(10 + k) for k in range(5)] == [inner(k) for k in range(5)]  # steps counted from the end
    assert S.Warmup(inner, warmup_steps=0).values(5).tolist() == inner.values(5).tolist()


def test_join_scale_clamp_repeat_tables():
    j = S.Join((S.Constant(3.0), S.Step(2.0, step_size=2, gamma=0.5), S.Exponential(1.0, 0.1)), (2, 6))
    # steps 0-1: 3; 2-5: the step schedule's steps 0-3 -> 2, 2, 1, 1; 6-: 1, 0.1, 0.01
    assert j.values(9) == pytest.approx([3, 3, 2, 2, 1, 1, 1, 0.1, 0.01], rel=1e-12)
    assert S.Scale(S.Constant(0.2), 2.5)(7) == pytest.approx(0.5, rel=1e-15)
    c = S.Clamp(S.Exponential(1.0, 0.1), min_lr=0.005, max_lr=0.5)
    assert c.values(4) == pytest.approx([0.5, 0.1, 0.01, 0.005], rel=1e-12)
    r = S.Repeat(S.Linear(1.0, total_steps=4, start_factor=0.0, end_factor=1.0), period=3)
    assert r.values(7) == pytest.approx([0.0, 0.25, 0.5, 0.0, 0.25, 0.5, 0.0], rel=1e-15)


def test_robbins_monro_family_and_inverse_sqrt():
    it = S.InverseTime(0.1, decay_rate=0.5)
    assert [it(0), it(2), it(18)] == pytest.approx([0.1, 0.05, 0.01], rel=1e-15)
    ip = S.InversePower(0.1, power=0.5)
    assert [ip(0), ip(3), ip(99)] == pytest.approx([0.1, 0.05, 0.01], rel=1e-14)
    w = 400
    noam = S.Warmup(S.InverseSqrt(1e-3, timescale=w), warmup_steps=w)
    t = np.arange(w, 20_000, 37)
    # Vaswani et al. 2017 / fairseq inverse_sqrt after warmup: lr * sqrt(W / t)
    np.testing.assert_allclose(noam.values(t.tolist()), 1e-3 * np.sqrt(w / t), rtol=1e-13)
    np.testing.assert_allclose(noam.values(w), 1e-3 * np.arange(w) / w, rtol=1e-13)


@pytest.mark.parametrize(
    ("decay", "at_90"),
    [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))],
)
def test_wsd_table(decay, at_90):
    s = S.WarmupStableDecay(1.0, total_steps=100, decay_steps=20, warmup_steps=10, min_lr=0.0, decay=decay)
    assert [s(0), s(5), s(10), s(79), s(80)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0], rel=1e-15)
    assert s(90) == pytest.approx(at_90, rel=1e-12)
    assert s(100) == 0.0 and s(10**9) == 0.0
    with_floor = S.WarmupStableDecay(1.0, total_steps=100, decay_steps=20, min_lr=0.1, decay=decay)
    assert with_floor(90) == pytest.approx(0.1 + 0.9 * at_90, rel=1e-12)
    assert with_floor(100) == pytest.approx(0.1, rel=1e-15)


def _brute_cycles(t0: int, mult: int, steps: int) -> list[tuple[int, int, int]]:
    out, i, start, length = [], 0, 0, t0
    for t in range(steps):
        if t >= start + length:
            i, start, length = i + 1, start + length, length * mult
        out.append((i, t - start, length))
    return out


@pytest.mark.parametrize(("t0", "mult"), [(1, 1), (7, 1), (1, 2), (3, 2), (5, 3), (2, 7)])
def test_sgdr_cycles_and_per_cycle_decay(t0, mult):
    s = S.CosineRestarts(1.0, cycle_steps=t0, cycle_mult=mult, min_lr=0.01, cycle_decay=0.5)
    ref = _brute_cycles(t0, mult, 3000)
    assert [s.cycle(t) for t in range(3000)] == ref
    for t in range(0, 3000, 7):
        i, cur, length = ref[t]
        peak = max(0.5**i, 0.01)
        assert s(t) == pytest.approx(0.01 + (peak - 0.01) * (1 + math.cos(math.pi * cur / length)) / 2, rel=1e-12)
    # huge steps stay exact and cheap
    big = 10**12
    i, cur, length = s.cycle(big)
    start = big - cur
    assert 0 <= cur < length and (mult == 1 or start == t0 * (mult**i - 1) // (mult - 1))


def test_out_of_phase_generator_discriminator():
    g, d = S.out_of_phase(S.Cyclic(0.2, step_size_up=25, min_lr=0.02), phase=0.5)
    # two triangle waves half a period apart sum to min_lr + lr at every step
    for t in range(0, 1000):
        assert g(t) + d(t) == pytest.approx(0.22, rel=1e-12)
        assert d(t) == g(t + 25)
    assert g(25) == pytest.approx(0.2) and d(25) == pytest.approx(0.02)
    quarter = S.PhaseShift(S.Constant(1.0), phase=0.25, period=40)
    assert quarter(0) == 1.0
    shifted = S.PhaseShift(S.Exponential(1.0, 0.5), phase=0.25, period=40)
    assert shifted(0) == 0.5**10


def test_beta_schedules_match_numpy_references():
    T = 1000
    lin = S.LinearBeta(T, beta_start=1e-4, beta_end=0.02)
    np.testing.assert_allclose(lin.values(T), np.linspace(1e-4, 0.02, T), rtol=1e-12)  # Ho et al. 2020
    assert lin(5 * T) == 0.02
    cos = S.CosineBeta(T)
    s = 0.008
    steps = np.arange(T + 1)
    abar = np.cos(((steps / T) + s) / (1 + s) * np.pi / 2) ** 2
    abar = abar / abar[0]
    ref = np.minimum(1 - abar[1:] / abar[:-1], 0.999)  # Nichol & Dhariwal 2021
    np.testing.assert_allclose(cos.values(T), ref, rtol=1e-9)
    coupled = S.DiffusionCoupled(0.1, cos)
    np.testing.assert_allclose(coupled.values(T), 0.1 / (1 + ref), rtol=1e-9)
    assert coupled(T - 1) == pytest.approx(0.1 / 1.999, rel=1e-12)  # the clipped last beta


def test_curriculum_spike_table():
    s = S.CurriculumSpike(
        (S.Constant(0.1), S.Constant(0.05), S.Linear(0.02, total_steps=10, start_factor=1.0, end_factor=0.5)),
        boundaries=(10, 20),
        spike_lr=0.3,
        spike_steps=3,
    )
    # 0-9 phase 1, 10-19 phase 2, 20-22 spike, 23- consolidation from its own step 0
    expected = [0.1] * 10 + [0.05] * 10 + [0.3] * 3 + [0.02 * (1 - 0.5 * k / 10) for k in range(11)] + [0.01]
    assert s.values(len(expected)) == pytest.approx(expected, rel=1e-12)
    no_spike = S.CurriculumSpike((S.Constant(0.1), S.Constant(0.05)), boundaries=(5,), spike_lr=1.0, spike_steps=0)
    assert no_spike.values(7).tolist() == [0.1] * 5 + [0.05] * 2
