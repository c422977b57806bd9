"""Robbins-Monro verdicts against the p-series test: sum t^-p diverges iff p <= 1."""

from __future__ import annotations

import numpy as np
import pytest

from distsched import schedules as S
from distsched.analysis import robbins_monro


@pytest.mark.parametrize("p", [0.3, 0.5, 0.6, 0.75, 1.0, 1.2, 2.0])
def test_power_laws_numeric(p):
    r = robbins_monro(lambda t: 0.1 * (t + 1) ** -p)
    assert not r.exact
    assert r.tail_exponent == pytest.approx(p, abs=1e-3)
    assert r.sum_diverges == (p <= 1)
    assert r.sum_sq_converges == (p > 0.5)
    assert r.satisfied == (0.5 < p <= 1)


def test_power_law_times_bounded_cycle_keeps_the_exponent():
    r = robbins_monro(lambda t: (1.0 + 0.5 * ((t % 97) / 97)) / (t + 1) ** 0.8)
    assert r.satisfied and r.tail_exponent == pytest.approx(0.8, abs=5e-3)


def test_geometric_decay_converges():
    r = robbins_monro(lambda t: 0.1 * 0.99999**t)
    assert not r.sum_diverges and r.sum_sq_converges and not r.satisfied


@pytest.mark.parametrize(
    "sched, sum_div, sq_conv",
    [
        (S.constant(0.1), True, False),
        (S.constant(0.0), False, True),
        (S.cosine(lr=0.1, total_steps=100), False, True),
        (S.cosine(lr=0.1, total_steps=100, min_lr=1e-3), True, False),
        (S.warmup(S.cosine(lr=0.1, total_steps=100), warmup_steps=10), False, True),
        (S.repeat(S.cosine(lr=0.1, total_steps=50), period=50), True, False),
        (S.scale(S.constant(0.1), 0.0), False, True),
        (S.clamp(S.cosine(lr=0.1, total_steps=100), min_lr=1e-4), True, False),
        (S.join([S.constant(0.1), S.cosine(lr=0.1, total_steps=10)], [5]), False, True),
        (S.step(lr=0.1, step_size=1000, gamma=0.5), False, True),
        (S.exponential(lr=0.1, gamma=0.9999), False, True),
        (S.multistep(lr=0.1, milestones=[10, 20]), True, False),
        (S.inverse_time(lr=0.1, decay_rate=0.01), True, True),
        (S.inverse_power(lr=0.1, power=0.7), True, True),
        (S.inverse_power(lr=0.1, power=1.5), False, True),
        (S.inverse_sqrt(lr=0.1, timescale=100.0), True, False),
        (S.warmup(S.inverse_sqrt(lr=0.1, timescale=100.0), warmup_steps=100), True, False),
        (S.polynomial(lr=0.1, total_steps=100, power=2.0), False, True),
        (S.linear(lr=0.1, total_steps=100, start_factor=1.0, end_factor=0.1), True, False),
        (S.one_cycle(lr=0.1, total_steps=100), True, False),
        (S.wsd(lr=0.1, total_steps=100, decay_steps=20), False, True),
        (S.cyclic(lr=0.1, step_size_up=50), True, False),
        (S.cyclic(lr=0.1, step_size_up=50, mode="triangular2"), False, True),
        (S.cosine_restarts(lr=0.1, cycle_steps=64), True, False),
        (S.curriculum_spike([S.constant(0.1), S.inverse_time(lr=0.05, decay_rate=0.1)], [10], 0.2), True, True),
    ],
)
def test_known_families_exact_and_agree_with_numeric(sched, sum_div, sq_conv):
    r = robbins_monro(sched)
    assert r.exact and (r.sum_diverges, r.sum_sq_converges) == (sum_div, sq_conv)
    numeric = robbins_monro(lambda t: sched(t))  # a plain callable takes the numeric path
    assert not numeric.exact and (numeric.sum_diverges, numeric.sum_sq_converges) == (sum_div, sq_conv)


@pytest.mark.parametrize(
    "mult, decay, sum_div, sq_conv",
    [(1, 1.0, True, False), (2, 0.5, True, True), (2, 0.6, True, True), (2, 0.4, False, True), (3, 0.6, True, False)],
)
def test_sgdr_growing_cycles_closed_form(mult, decay, sum_div, sq_conv):
    # cycle i adds ~ (m d)^i to sum lr_t and ~ (m d^2)^i to sum lr_t^2: geometric series in the cycle index
    r = robbins_monro(S.cosine_restarts(lr=0.1, cycle_steps=10, cycle_mult=mult, cycle_decay=decay))
    assert r.exact and (r.sum_diverges, r.sum_sq_converges) == (sum_div, sq_conv)
    # independent: sum the values over whole cycles; consecutive cycle sums form a geometric series
    # with ratio m d (and m d^2 for the squares), which diverges iff the ratio is >= 1
    sched = S.cosine_restarts(lr=0.1, cycle_steps=10, cycle_mult=mult, cycle_decay=decay)

    def start(n):
        return 10 * n if mult == 1 else 10 * (mult**n - 1) // (mult - 1)

    sums = [np.array([(sched(t), sched(t) ** 2) for t in range(start(i), start(i + 1))]).sum(0) for i in (6, 7)]
    ratio, ratio_sq = sums[1] / sums[0]
    assert ratio == pytest.approx(mult * decay, rel=0.02) and ratio_sq == pytest.approx(mult * decay**2, rel=0.02)
    assert (ratio >= 0.99) == sum_div and (ratio_sq < 1) == sq_conv


def test_negative_values_rejected():
    with pytest.raises(ValueError, match="schedule"):
        robbins_monro(lambda t: -1.0)
