"""Differential privacy over schedules, backed by Opacus: accounting, budget guard, noise schedules, planner."""

from distsched.privacy.accounting import (
    ACCOUNTANTS,
    Accountant,
    Segment,
    compress,
    epsilon,
    epsilon_curve,
    opacus_accountant,
)
from distsched.privacy.guard import BudgetExhausted, BudgetGuard
from distsched.privacy.noise import (
    NOISE_SCHEDULES,
    ConstantNoise,
    ExponentialNoise,
    LinearNoise,
    NoiseSchedule,
    NoiseScheduler,
    PiecewiseNoise,
    StepNoise,
    noise_schedule_from_spec,
)
from distsched.privacy.planner import Plan, plan, scale_batch_and_noise, steps_for_epochs

__all__ = [
    "ACCOUNTANTS",
    "NOISE_SCHEDULES",
    "Accountant",
    "BudgetExhausted",
    "BudgetGuard",
    "ConstantNoise",
    "ExponentialNoise",
    "LinearNoise",
    "NoiseSchedule",
    "NoiseScheduler",
    "PiecewiseNoise",
    "Plan",
    "Segment",
    "StepNoise",
    "compress",
    "epsilon",
    "epsilon_curve",
    "noise_schedule_from_spec",
    "opacus_accountant",
    "plan",
    "scale_batch_and_noise",
    "steps_for_epochs",
]
