"""Differential privacy over schedules, backed by Opacus: accounting, budget guard."""

from distsched.privacy.accounting import (
    ACCOUNTANTS,
    Accountant,
    Segment,
    compress,
    epsilon,
    opacus_accountant,
)
from distsched.privacy.guard import BudgetExhausted, BudgetGuard

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "BudgetExhausted",
    "BudgetGuard",
    "Segment",
    "compress",
    "epsilon",
    "opacus_accountant",
]
