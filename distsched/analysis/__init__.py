"""Theory tools: Robbins-Monro conditions, Hessian stability bounds, the FP16/BF16 overflow-safe LR,
the LR range test and the diagnosis of loss curves."""

from distsched.analysis.diagnosis import REMEDIES_BY_VERDICT, VERDICTS, Diagnosis, diagnose, diagnose_records
from distsched.analysis.fp16 import cap_lr_for_overflow, dtype_max, grad_norm, overflow_safe_lr
from distsched.analysis.hessian import (
    EigenEstimate,
    HessianOperator,
    StabilityBounds,
    hessian_stability,
    lanczos_eigenvalues,
    stability_bounds,
    top_eigenvalue,
)
from distsched.analysis.range_test import RangeTestResult, lr_range_test
from distsched.analysis.robbins_monro import RobbinsMonro, robbins_monro

__all__ = [
    "REMEDIES_BY_VERDICT",
    "VERDICTS",
    "Diagnosis",
    "EigenEstimate",
    "HessianOperator",
    "RangeTestResult",
    "RobbinsMonro",
    "StabilityBounds",
    "cap_lr_for_overflow",
    "diagnose",
    "diagnose_records",
    "dtype_max",
    "grad_norm",
    "hessian_stability",
    "lanczos_eigenvalues",
    "lr_range_test",
    "overflow_safe_lr",
    "robbins_monro",
    "stability_bounds",
    "top_eigenvalue",
]
