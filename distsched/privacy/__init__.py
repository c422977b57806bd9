"""Differential privacy over schedules, backed by Opacus: accounting, budget guard, noise schedules, planner,
LR-noise coupling, ``make_private`` for one's own loop, and DP-SGD in single, group (DP-SGD across workers)
and local (DP local SGD) modes. Noise and sampling are secret by default (:mod:`distsched.privacy.randomness`)."""

from distsched.privacy.accounting import (
    ACCOUNTANTS,
    RDP_ORDERS,
    Accountant,
    AccountingTooLarge,
    Segment,
    compress,
    epsilon,
    epsilon_curve,
    opacus_accountant,
)
from distsched.privacy.audit import AuditReport, GradientCanaries, audit_training, epsilon_lower_bound
from distsched.privacy.config import PrivacyConfig, privacy_config
from distsched.privacy.coupling import (
    NoiseAwareLR,
    expected_sq_distance_after_step,
    optimal_step_quadratic,
    update_noise_std,
)
from distsched.privacy.engine import (
    MODES,
    PerExampleLoss,
    PoissonBatches,
    PrivateTraining,
    poisson_loader,
    private_training,
)
from distsched.privacy.entry import make_private
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
from distsched.privacy.planner import (
    Plan,
    calibrate_batch,
    calibrate_epsilon,
    calibrate_noise,
    calibrate_steps,
    plan,
    scale_batch_and_noise,
    steps_for_epochs,
)
from distsched.privacy.randomness import NOT_PRIVATE, secret_seed
from distsched.privacy.training import NOT_PRIVATE_METRICS, attach_privacy, resolve_mode, run_epsilon

__all__ = [
    "ACCOUNTANTS",
    "MODES",
    "NOISE_SCHEDULES",
    "NOT_PRIVATE",
    "NOT_PRIVATE_METRICS",
    "Accountant",
    "AuditReport",
    "AccountingTooLarge",
    "BudgetExhausted",
    "BudgetGuard",
    "ConstantNoise",
    "ExponentialNoise",
    "GradientCanaries",
    "LinearNoise",
    "NoiseAwareLR",
    "NoiseSchedule",
    "NoiseScheduler",
    "PerExampleLoss",
    "PiecewiseNoise",
    "Plan",
    "PoissonBatches",
    "PrivacyConfig",
    "PrivateTraining",
    "RDP_ORDERS",
    "Segment",
    "StepNoise",
    "attach_privacy",
    "audit_training",
    "calibrate_batch",
    "calibrate_epsilon",
    "calibrate_noise",
    "calibrate_steps",
    "compress",
    "epsilon",
    "epsilon_curve",
    "epsilon_lower_bound",
    "expected_sq_distance_after_step",
    "make_private",
    "noise_schedule_from_spec",
    "opacus_accountant",
    "optimal_step_quadratic",
    "plan",
    "poisson_loader",
    "private_training",
    "privacy_config",
    "resolve_mode",
    "run_epsilon",
    "scale_batch_and_noise",
    "secret_seed",
    "steps_for_epochs",
    "update_noise_std",
]
