"""Robbins-Monro verdicts against the p-series test: sum t^-p diverges iff p <= 1."""

from __future__ import annotations

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
    ],
)
def test_known_families_exact_and_agree_with_numeric(sched, sum_div, sq_conv):
    r = robbins_monro(sched)
    assert r.exact and (r.sum_diverges, r.sum_sq_converges) == (sum_div, sq_conv)
    numeric = robbins_monro(lambda t: sched(t))  # a plain callable takes the numeric path
    assert not numeric.exact and (numeric.sum_diverges, numeric.sum_sq_converges) == (sum_div, sq_conv)


def test_negative_values_rejected():
    with pytest.raises(ValueError, match="schedule"):
        robbins_monro(lambda t: -1.0)
