"""Sync rules: pure functions of (step, lr, loss, total_steps), checked row by row against the
formulas of their papers, plus edge steps, invalid input and state round trips."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distsched import schedules as S
from distsched.sync import H_CAP, QSR, RULES, AdaComm, FixedH, LRCompensation, PostLocal, suggest_alpha

# ---------------------------------------------------------------- FixedH
FIXED_ROWS = [
    # (h, step, total_steps, expected)
    (4, 0, None, 4),  # no total: always h
    (4, 10**9, None, 4),  # huge step: still h
    (4, 0, 10, 4),  # far from the end
    (4, 8, 10, 2),  # only 2 steps left: cut so that the last step syncs
    (4, 9, 10, 1),  # the last step alone
    (1, 5, 10, 1),  # h=1 is every step
]


@pytest.mark.parametrize("h,step,total,expected", FIXED_ROWS)
def test_fixed_h(h, step, total, expected):
    assert FixedH(h).next_period(step, lr=None, total_steps=total) == expected


# ---------------------------------------------------------------- QSR
QSR_ROWS = [
    # (h_base, alpha, gamma, h_max, step, lr, total, expected)
    (4, 0.2, 2.0, None, 0, 0.1, None, 4),  # (0.2/0.1)^2 = 4 exactly (float noise must not floor it to 3)
    (4, 0.2, 2.0, None, 0, 0.2, None, 4),  # (0.2/0.2)^2 = 1 < h_base: h_base
    (4, 0.2, 2.0, None, 0, 0.05, None, 16),  # (0.2/0.05)^2 = 16
    (4, 0.2, 2.0, None, 0, 0.03, None, 44),  # floor(44.44...) = 44
    (4, 0.2, 2.0, None, 0, 0.02, None, 100),  # (0.2/0.02)^2 = 100
    (4, 0.2, 2.0, 64, 0, 0.02, None, 64),  # capped by h_max
    (4, 0.2, 2.0, None, 950, 0.02, 1000, 50),  # capped by the 50 steps left
    (4, 0.2, 2.0, None, 999, 0.02, 1000, 1),  # the last step
    (4, 0.2, 2.0, None, 0, 0.0, None, H_CAP),  # lr = 0: unbounded, reported as H_CAP
    (4, 0.2, 2.0, None, 10, 0.0, 100, 90),  # lr = 0 with a total: the rest of the run
    (4, 0.2, 2.0, None, 0, 1e-300, None, H_CAP),  # overflowing formula: H_CAP, no OverflowError
    (2, 0.3, 1.0, None, 0, 0.01, None, 30),  # gamma = 1: linear in 1/lr, floor(30.000...) = 30
    (2, 0.3, 3.0, None, 0, 0.1, None, 27),  # gamma = 3: (3)^3 = 27
]


@pytest.mark.parametrize("h_base,alpha,gamma,h_max,step,lr,total,expected", QSR_ROWS)
def test_qsr_rows(h_base, alpha, gamma, h_max, step, lr, total, expected):
    rule = QSR(h_base=h_base, alpha=alpha, gamma=gamma, h_max=h_max)
    assert rule.next_period(step, lr, total_steps=total) == expected


@settings(deadline=None)  # no timing in tests: the machine is shared
@given(
    lr=st.floats(1e-6, 10.0),
    h_base=st.integers(1, 64),
    alpha=st.floats(1e-3, 1.0),
    step=st.integers(0, 10_000),
    left=st.integers(1, 10_000),
)
def test_qsr_bounds(lr, h_base, alpha, step, left):
    total = step + left
    h = QSR(h_base=h_base, alpha=alpha).next_period(step, lr, total_steps=total)
    assert 1 <= h <= left  # never past the last step
    assert h == min(left, max(h_base, math.floor((alpha / lr) ** 2 * (1 + 1e-12))))


def test_qsr_is_non_decreasing_along_a_cosine_decay():
    sched = S.cosine(lr=0.1, total_steps=1000)
    rule = QSR(h_base=4, alpha=suggest_alpha(0.1, 4))
    hs = [rule.next_period(t, sched(t)) for t in range(0, 1000, 10)]
    assert hs == sorted(hs) and hs[0] == 4 and hs[-1] > 1000


# ---------------------------------------------------------------- PostLocal
def _qsr_sync_steps_reference(peak, cosine_steps, warmup, h_base, alpha):
    """Steps after which QSR syncs on a linear warmup from 0 then cosine, from the formulas alone:
    lr(t) = peak * t / W for t < W, peak * (1 + cos(pi * (t - W) / C)) / 2 after; rounds starting
    at t < W have H = h_base, later ones H = max(h_base, floor((alpha / lr(t))^2)), cut at T - t."""
    total = warmup + cosine_steps
    start, syncs = 0, []
    while start < total:
        if start < warmup:
            h = h_base
        else:
            lr = peak * (1 + math.cos(math.pi * (start - warmup) / cosine_steps)) / 2
            ratio = (alpha / lr) ** 2 if lr > 0 else math.inf
            h = max(h_base, math.floor(ratio + 1e-9)) if ratio < total else total
        start = min(start + h, total)
        syncs.append(start - 1)
    return syncs


def test_qsr_holds_h_base_through_warmup_then_follows_the_formula():
    """Gu et al. 2024 apply QSR after the warmup (their LocalOptimizer.adjust_h keeps H fixed while
    step < warmup_steps). The README/config shape ``cosine + warmup_steps`` warms up from LR 0:
    reading that LR made the first round the whole run (one sync at the end)."""
    from distsched.sync import LocalSGD

    peak, cosine_steps, warmup, h_base, alpha = 0.2, 400, 20, 2, 0.2
    total = warmup + cosine_steps  # total_steps counts the whole run, warmup included
    sched = S.from_spec({"name": "cosine", "lr": peak, "total_steps": total, "warmup_steps": warmup})
    expected = _qsr_sync_steps_reference(peak, cosine_steps, warmup, h_base, alpha)
    assert expected[: warmup // h_base] == list(range(h_base - 1, warmup, h_base)) and len(expected) > 20

    model = torch.nn.Linear(3, 2)
    engine = LocalSGD(model, QSR(h_base, alpha, warmup_steps=warmup), sched, total_steps=total)
    assert [t for t in range(total) if engine.step(t)] == expected
    assert engine.rounds == len(expected)

    # the rule as it was (no warmup_steps): LR 0 at step 0, so one round spans the whole run
    unaware = LocalSGD(torch.nn.Linear(3, 2), QSR(h_base, alpha), sched, total_steps=total)
    assert [t for t in range(total) if unaware.step(t)] == [total - 1]


def test_post_local_switch_step():
    rule = PostLocal(h=8, switch_step=100)
    rows = [
        (0, 1),  # before the switch: H = 1 (mini-batch SGD)
        (99, 1),  # last step before the switch
        (100, 8),  # switched
        (500, 8),  # stays switched
    ]
    assert [rule.next_period(t, lr=None) for t, _ in rows] == [h for _, h in rows]
    assert rule.switched_at == 100


def test_post_local_first_decay_of_a_step_schedule_after_warmup():
    # warmup to 0.1 over 5 steps, then x0.1 at step 5 + 20 (warmup shifts the wrapped schedule)
    sched = S.warmup(S.join([S.constant(0.1), S.constant(0.01)], [20]), warmup_steps=5)
    rule = PostLocal(h=4)
    hs = [rule.next_period(t, sched(t)) for t in range(35)]
    assert hs[:25] == [1] * 25  # warmup rises and the plateau holds: no decay yet
    assert hs[25:] == [4] * 10  # the drop at step 25 switches to H = 4
    assert rule.switched_at == 25


def test_post_local_cut_at_total_steps():
    rule = PostLocal(h=8, switch_step=0)
    assert rule.next_period(95, None, total_steps=100) == 5  # 5 steps left


# ---------------------------------------------------------------- AdaComm
def test_adacomm_rows():
    rule = AdaComm(h_0=4)
    rows = [
        # (step, lr, loss, expected)
        (0, 0.1, None, 4),  # no loss yet: ceil(sqrt(1 * 1) * 4) = 4, lr_0 = 0.1
        (10, 0.1, 2.0, 4),  # first loss: F_0 = 2, ratio 1
        (20, 0.1, 0.5, 2),  # ceil(sqrt(0.5 / 2) * 4) = 2
        (30, 0.025, 0.5, 4),  # ceil(sqrt(4 * 0.25) * 4) = 4
        (40, 0.01, 0.5, 7),  # ceil(sqrt(10 * 0.25) * 4) = ceil(6.32) = 7
        (50, 0.01, None, 7),  # loss None: the latest loss (0.5) is used
        (60, 0.1, 0.0, 1),  # loss 0 after F_0: ceil(0) = 0, H is at least 1
    ]
    assert [rule.next_period(t, lr, loss) for t, lr, loss, _ in rows] == [h for *_, h in rows]


def test_adacomm_caps():
    rule = AdaComm(h_0=4, h_max=10)
    rule.next_period(0, 0.1, 1.0)
    assert rule.next_period(1, 0.001, 1.0) == 10  # ceil(sqrt(100) * 4) = 40 -> h_max
    assert rule.next_period(2, 0.0, 1.0) == 10  # lr 0: unbounded -> h_max
    assert rule.next_period(95, 0.001, 1.0, total_steps=100) == 5  # the rest of the run


# ---------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    "lr_peak,h_base,gamma,expected",
    [
        (0.1, 4, 2.0, 0.2),  # 0.1 * sqrt(4)
        (0.1, 16, 2.0, 0.4),  # 0.1 * sqrt(16)
        (0.5, 8, 3.0, 1.0),  # 0.5 * 8^(1/3)
    ],
)
def test_suggest_alpha(lr_peak, h_base, gamma, expected):
    alpha = suggest_alpha(lr_peak, h_base, gamma)
    assert alpha == pytest.approx(expected)
    # by construction QSR gives h_base at the peak LR
    assert QSR(h_base=h_base, alpha=alpha, gamma=gamma).next_period(0, lr_peak) == h_base


@pytest.mark.parametrize(
    "h_ref,power,h,expected",
    [
        (4, 0.5, 16, 0.5),  # (4/16)^0.5
        (4, 1.0, 64, 1 / 16),  # (4/64)^1
        (4, 0.5, 1, 1.0),  # H < h_ref: never above 1
        (4, 0.0, 64, 1.0),  # power 0: off
    ],
)
def test_lr_compensation(h_ref, power, h, expected):
    assert LRCompensation(h_ref, power).factor(h) == pytest.approx(expected)


# ---------------------------------------------------------------- invalid input
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: FixedH(0), r"h must be an integer >= 1, got 0"),
        (lambda: QSR(h_base=0, alpha=0.2), r"h_base must be an integer >= 1, got 0"),
        (lambda: QSR(h_base=4, alpha=-1.0), r"alpha must be > 0, got -1.0"),
        (lambda: QSR(h_base=4, alpha=0.2, gamma=0), r"gamma must be > 0, got 0"),
        (lambda: QSR(h_base=8, alpha=0.2, h_max=4), r"h_max must be an integer >= 8, got 4"),
        (lambda: QSR(h_base=2, alpha=0.2, warmup_steps=-1), r"warmup_steps must be an integer >= 0, got -1"),
        (lambda: PostLocal(h=4, switch_step=-1), r"switch_step must be an integer >= 0, got -1"),
        (lambda: PostLocal(h=4, decay_tol=1.0), r"decay_tol must be in \[0, 1\), got 1.0"),
        (lambda: AdaComm(h_0=0), r"h_0 must be an integer >= 1, got 0"),
        (lambda: suggest_alpha(0.0, 4), r"lr_peak must be > 0, got 0.0"),
        (lambda: LRCompensation(0), r"h_ref must be an integer >= 1, got 0"),
        (lambda: QSR(4, 0.2).next_period(0, None), r"lr must be a number >= 0 for QSR"),
        (lambda: QSR(4, 0.2).next_period(-1, 0.1), r"step must be an integer >= 0, got -1"),
        (lambda: QSR(4, 0.2).next_period(0, -0.1), r"lr must be >= 0, got -0.1"),
        (lambda: FixedH(2).next_period(0, None, total_steps=0), r"total_steps must be an integer >= 1, got 0"),
        (lambda: AdaComm(2).next_period(0, 0.1, loss=0.0), r"loss must be > 0 the first time"),
        (lambda: AdaComm(2).next_period(0, 0.1, loss=-1.0), r"loss must be >= 0, got -1.0"),
    ],
)
def test_invalid_input_raises_value_error_naming_it(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ---------------------------------------------------------------- state round trips
def _drive(rule, steps, sched):
    out = []
    for t in steps:
        out.append(rule.next_period(t, sched(t), loss=2.0 / (1 + t)))
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: FixedH(4),
        lambda: PostLocal(h=4),  # switch found from the LR: state = peak LR, switch step
        lambda: QSR(h_base=2, alpha=0.2),
        lambda: AdaComm(h_0=2),  # state = lr_0, F_0, latest loss
    ],
)
def test_state_dict_round_trip(make):
    sched = S.join([S.constant(0.1), S.constant(0.02)], [5])
    straight = make()
    expected = _drive(straight, range(12), sched)
    first = make()
    head = _drive(first, range(6), sched)
    resumed = make()
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    assert head + _drive(resumed, range(6, 12), sched) == expected
    assert pickle.loads(pickle.dumps(make())) == make()  # rules pickle (Ray ships them)


def test_catalogue_names_every_rule():
    assert set(RULES) == {"fixed", "post_local", "qsr", "adacomm"}


def test_package_docstring_example_holds():
    import doctest

    import distsched.sync

    result = doctest.testmod(distsched.sync, verbose=False)
    assert result.attempted >= 3 and result.failed == 0
