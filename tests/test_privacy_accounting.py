"""Accounting over schedules against Opacus' own accountants and Opacus' reference values."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from distsched.privacy import Accountant, BudgetExhausted, BudgetGuard, Segment, compress, epsilon


def test_reference_rdp_value_from_opacus_tests():
    # opacus/tests/accountants_test.py: sigma=1.5, q=0.04, 2250 steps, delta=1e-5 -> 7.32911117143
    assert epsilon([(1.5, 0.04, 2250)], 1e-5, "rdp") == pytest.approx(7.32911117143, abs=1e-7)
    acc = Accountant("rdp")
    acc.step(1.5, 0.04, 2250)
    assert acc.epsilon(1e-5) == pytest.approx(7.32911117143, abs=1e-7)


def test_reference_prv_value_from_opacus_tests():
    # opacus/tests/accountants_test.py: same, int(90 / 0.04) = 2249 steps -> 6.777395712150674
    assert epsilon([(1.5, 0.04, 2249)], 1e-5, "prv") == pytest.approx(6.777395712150674, abs=1e-7)


def test_history_matches_opacus_step_by_step():
    schedule = [(1.2, 0.02)] * 30 + [(0.9, 0.02)] * 20 + [(0.9, 0.05)] * 10 + [(1.2, 0.02)] * 5
    ref_rdp, ref_prv, ours = RDPAccountant(), PRVAccountant(), Accountant("rdp")
    for sigma, q in schedule:
        ref_rdp.step(noise_multiplier=sigma, sample_rate=q)
        ref_prv.step(noise_multiplier=sigma, sample_rate=q)
        ours.step(sigma, q)
    assert ours.history == [Segment(*s) for s in ref_rdp.history]
    assert ours.steps == len(schedule)
    # incremental RDP curve equals Opacus recomputing from the history
    assert ours.epsilon(1e-5) == pytest.approx(ref_rdp.get_epsilon(delta=1e-5), rel=1e-12)
    assert epsilon(schedule, 1e-5, "prv") == pytest.approx(ref_prv.get_epsilon(delta=1e-5), rel=1e-12)


def test_epsilon_after_equals_recording():
    acc = Accountant("rdp", [(1.1, 0.01, 100)])
    predicted = acc.epsilon_after(1e-6, (0.8, 0.02, 37))
    acc.step(0.8, 0.02, 37)
    ref = RDPAccountant()
    ref.history = [(1.1, 0.01, 100), (0.8, 0.02, 37)]
    assert predicted == pytest.approx(acc.epsilon(1e-6), rel=1e-12)
    assert predicted == pytest.approx(ref.get_epsilon(delta=1e-6), rel=1e-12)


def test_gdp_where_valid_and_refused_otherwise():
    from opacus.accountants.analysis import gdp

    ref = gdp.compute_eps_poisson(steps=500, noise_multiplier=1.0, sample_rate=0.01, delta=1e-5)
    assert epsilon([(1.0, 0.01, 200), (1.0, 0.01, 300)], 1e-5, "gdp") == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="gdp"):
        epsilon([(1.0, 0.01, 200), (0.9, 0.01, 300)], 1e-5, "gdp")
    acc = Accountant("gdp")
    acc.step(1.0, 0.01)
    with pytest.raises(ValueError, match="gdp"):
        acc.step(2.0, 0.01)


def test_compress_and_edges():
    assert compress([(1.0, 0.1, 2), (1.0, 0.1, 3), (1.0, 0.2, 0), (2.0, 0.1)]) == [
        Segment(1.0, 0.1, 5),
        Segment(2.0, 0.1, 1),
    ]
    assert epsilon([], 1e-5) == 0.0
    assert epsilon([(0.0, 0.1, 1)], 1e-5) == math.inf
    assert Accountant("rdp", [(0.0, 0.1, 1)]).epsilon(1e-5) == math.inf


@pytest.mark.parametrize(
    ("segment", "delta", "accountant", "match"),
    [
        ((1.0, 0.1, 1), 0.0, "rdp", "delta"),
        ((1.0, 0.1, 1), 1.0, "rdp", "delta"),
        ((1.0, 0.0, 1), 1e-5, "rdp", "sample_rate"),
        ((1.0, 1.5, 1), 1e-5, "rdp", "sample_rate"),
        ((-1.0, 0.1, 1), 1e-5, "rdp", "noise_multiplier"),
        ((1.0, 0.1, -3), 1e-5, "rdp", "steps"),
        ((1.0, 0.1, 1), 1e-5, "moments", "accountant"),
    ],
)
def test_invalid_input_names_the_parameter(segment, delta, accountant, match):
    with pytest.raises(ValueError, match=match):
        epsilon([segment], delta, accountant)


def test_state_dict_round_trip_and_opacus_compatibility():
    acc = Accountant("rdp", [(1.3, 0.05, 40), (1.0, 0.05, 10)])
    state = acc.state_dict()
    restored = Accountant.from_state_dict(state)
    assert restored.history == acc.history
    assert restored.epsilon(1e-5) == pytest.approx(acc.epsilon(1e-5), rel=1e-12)
    # Opacus' own accountant accepts and reproduces the same state
    ref = RDPAccountant()
    ref.load_state_dict(state)
    assert ref.get_epsilon(delta=1e-5) == pytest.approx(acc.epsilon(1e-5), rel=1e-12)
    with pytest.raises(ValueError, match="mechanism"):
        Accountant("prv").load_state_dict(state)


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_guard_allows_exactly_up_to_the_budget(mechanism):
    delta, sigma, q = 1e-5, 1.0, 0.05
    target = epsilon([(sigma, q, 25)], delta, mechanism) + 1e-9  # the budget of exactly 25 steps
    guard = BudgetGuard(target, delta, mechanism)
    taken = 0
    while guard.allows((sigma, q)):
        guard.record(sigma, q)
        taken += 1
        assert taken <= 25
    assert taken == 25
    assert guard.epsilon <= target
    assert epsilon([(sigma, q, 26)], delta, mechanism) > target  # the refused step would exceed it
    with pytest.raises(BudgetExhausted):
        guard.record(sigma, q)
    assert guard.steps == 25


def test_guard_remaining_steps_and_changing_noise():
    delta = 1e-5
    guard = BudgetGuard(3.0, delta, "rdp")
    guard.record(1.5, 0.02, 100)
    k = guard.remaining_steps(0.9, 0.02)
    assert epsilon([(1.5, 0.02, 100), (0.9, 0.02, k)], delta) <= 3.0
    assert epsilon([(1.5, 0.02, 100), (0.9, 0.02, k + 1)], delta) > 3.0
    assert guard.allows((0.9, 0.02, k)) and not guard.allows((0.9, 0.02, k + 1))


def test_guard_resume_cannot_reset_budget():
    guard = BudgetGuard(2.0, 1e-5)
    while guard.allows((1.0, 0.05)):
        guard.record(1.0, 0.05)
    state = guard.state_dict()
    fresh = BudgetGuard(2.0, 1e-5)
    assert fresh.allows((1.0, 0.05))  # a fresh guard would allow it ...
    fresh.load_state_dict(state)
    assert not fresh.allows((1.0, 0.05))  # ... the restored one does not
    assert fresh.steps == guard.steps
    larger = BudgetGuard(50.0, 1e-5)
    larger.load_state_dict(state)
    assert larger.target_epsilon == 2.0  # resuming with a larger target keeps the saved one
    with pytest.raises(ValueError, match="delta"):
        BudgetGuard(2.0, 1e-6).load_state_dict(state)


def test_training_config_refuses_gdp_with_a_changing_noise_schedule():
    """gdp accounts one constant (sigma, q) only: a schedule must be refused before training, not mid-run."""
    from distsched.privacy.config import PrivacyConfig

    assert PrivacyConfig(noise_multiplier=1.0, accountant="gdp").accountant == "gdp"
    with pytest.raises(ValueError, match="gdp"):
        PrivacyConfig(noise_multiplier=1.0, accountant="gdp", noise_schedule="step:gamma=0.5,step_size=3")


def test_epsilon_is_never_negative_where_rdps_conversion_goes_below_zero():
    """DP-FedAvg at an extreme target (sigma 312, q 0.1, delta 1e-3): the RDP -> (eps, delta) conversion
    (Balle et al. 2020) minimised over the orders, written out here, is below 0; the bound is 0."""
    import numpy as np
    from opacus.accountants.analysis.rdp import compute_rdp

    from distsched.privacy.accounting import RDP_ORDERS

    sigma, q, steps, delta = 312.0, 0.1, 10, 1e-3
    orders = np.asarray(RDP_ORDERS, dtype=float)
    rdp = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=RDP_ORDERS))
    closed = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    assert closed.min() < -1e-4  # the conversion's own value: what was reported (-0.0006)
    acc = Accountant("rdp")
    acc.step(sigma, q, steps)
    assert epsilon([(sigma, q, steps)], delta) == 0.0
    assert acc.epsilon(delta) == 0.0
    assert acc.epsilon_after(delta, (sigma, q, 1)) == 0.0  # the running-sum path
    # a positive bound is unchanged: the same closed form at sigma 1
    rdp1 = np.asarray(compute_rdp(q=q, noise_multiplier=1.0, steps=steps, orders=RDP_ORDERS))
    closed1 = rdp1 + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    assert epsilon([(1.0, q, steps)], delta) == pytest.approx(float(closed1.min()), rel=1e-9)


def test_gdp_epsilon_outside_opacus_root_bracket_is_a_bound_not_an_error():
    """Opacus' GDP conversion solves delta(eps; mu) = delta for eps in [0, 500] and raises outside it.
    Tiny mu (sigma 312): delta(0; mu) <= delta already, so eps = 0; huge mu (sigma 0.5, q 1, 1000 steps):
    delta(500; mu) > delta, so inf. Inside, the value is Opacus' GaussianAccountant's."""
    from opacus.accountants import GaussianAccountant
    from opacus.accountants.analysis import gdp

    mu = gdp.compute_mu_poisson(steps=10, noise_multiplier=312.0, sample_rate=0.1)
    assert gdp.delta_eps_mu(eps=0.0, mu=mu) <= 1e-3  # the closed form says eps = 0 holds
    assert epsilon([(312.0, 0.1, 10)], 1e-3, "gdp") == 0.0
    assert epsilon([(0.5, 1.0, 1000)], 1e-5, "gdp") == math.inf
    ref = GaussianAccountant()
    ref.history = [(1.1, 0.01, 500)]
    assert epsilon([(1.1, 0.01, 500)], 1e-5, "gdp") == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-12)
    acc = Accountant("gdp")
    acc.step(312.0, 0.1, 10)
    assert acc.epsilon(1e-3) == 0.0
