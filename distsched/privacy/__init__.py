"""Differential privacy over schedules, backed by Opacus: accounting, budget guard, noise schedules, planner,
LR-noise coupling and DP-SGD in single, group (DP-SGD across workers) and local (DP local SGD) modes."""

from distsched.privacy.accounting import (
    ACCOUNTANTS,
    Accountant,
    Segment,
    compress,
    epsilon,
    epsilon_curve,
    opacus_accountant,
)
from distsched.privacy.config import PrivacyConfig, privacy_config
from distsched.privacy.coupling import (
    NoiseAwareLR,
    expected_sq_distance_after_step,
    optimal_step_quadratic,
    update_noise_std,
)
from distsched.privacy.engine import MODES, PoissonBatches, PrivateTraining, make_private, poisson_loader
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
from distsched.privacy.training import attach_privacy, resolve_mode, run_epsilon

__all__ = [
    "ACCOUNTANTS",
    "MODES",
    "NOISE_SCHEDULES",
    "Accountant",
    "BudgetExhausted",
    "BudgetGuard",
    "ConstantNoise",
    "ExponentialNoise",
    "LinearNoise",
    "NoiseAwareLR",
    "NoiseSchedule",
    "NoiseScheduler",
    "PiecewiseNoise",
    "Plan",
    "PoissonBatches",
    "PrivacyConfig",
    "PrivateTraining",
    "Segment",
    "StepNoise",
    "attach_privacy",
    "compress",
    "epsilon",
    "epsilon_curve",
    "expected_sq_distance_after_step",
    "make_private",
    "noise_schedule_from_spec",
    "opacus_accountant",
    "optimal_step_quadratic",
    "plan",
    "poisson_loader",
    "privacy_config",
    "resolve_mode",
    "run_epsilon",
    "scale_batch_and_noise",
    "steps_for_epochs",
    "update_noise_std",
]
