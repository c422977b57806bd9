"""An overflow-safe learning rate for mixed precision (FP16/BF16) with a loss scale.

With loss scale ``S`` the backward pass produces ``S * g`` in the low-precision dtype, which
overflows when ``S * |g| > F`` (``F = torch.finfo(dtype).max``; torch's ``GradScaler`` then skips
the step and halves ``S``). If the gradient is ``beta``-Lipschitz (``|grad f(x) - grad f(y)| <= beta |x - y|``,
e.g. ``beta = lambda_max`` of the Hessian), one SGD step ``x' = x - eta g`` gives
``|g'| <= (1 + eta beta) |g|``, so the next scaled gradient stays finite, with a headroom
``margin >= 1``, whenever::

    eta <= eta_safe = (F / (margin * S * |g|) - 1) / beta

(Micikevicius et al. 2018, "Mixed Precision Training", for loss scaling; the bound is this module's).

In a GradScaler loop, cap the LR of the coming step after unscaling (the adapter sets it again at the
next ``lrs.step()``)::

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    cap_lr_for_overflow(optimizer, scaler, lipschitz=lambda_max, dtype=torch.float16)
    scaler.step(optimizer); scaler.update(); lrs.step()
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from distsched._checks import check_non_negative, check_range

if TYPE_CHECKING:
    import torch


def dtype_max(dtype: Any) -> float:
    """Largest finite value of a floating dtype (``torch.float16``: 65504, ``torch.bfloat16``: ~3.39e38)."""
    import torch

    if isinstance(dtype, str):
        names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if not getattr(dtype, "is_floating_point", False):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return float(torch.finfo(dtype).max)


def overflow_safe_lr(
    grad_norm: float,
    lipschitz: float,
    loss_scale: float | torch.amp.GradScaler,
    dtype: Any = "float16",
    *,
    margin: float = 2.0,
) -> float:
    """``eta_safe = (F / (margin * S * |g|) - 1) / beta``, clipped at 0 (``inf`` when ``beta`` or ``|g|`` is 0).

    Args:
        grad_norm: ``|g|``, the unscaled gradient norm (after ``scaler.unscale_(optimizer)``).
        lipschitz: ``beta``, a Lipschitz constant of the gradient (e.g. ``top_eigenvalue``).
        loss_scale: ``S``, a number or a ``torch.amp.GradScaler`` (its ``get_scale()`` is read).
        dtype: the low-precision dtype (torch dtype or ``"float16"``/``"bfloat16"``).
        margin: headroom factor ``>= 1`` below the largest finite value.
    """
    g = check_non_negative("grad_norm", grad_norm)
    beta = check_non_negative("lipschitz", lipschitz)
    if hasattr(loss_scale, "get_scale"):
        loss_scale = float(loss_scale.get_scale())
    scale = check_range("loss_scale", loss_scale, 0.0, math.inf, low_open=True, high_open=True)
    m = check_range("margin", margin, 1.0, math.inf, high_open=True)
    if beta == 0.0 or g == 0.0:
        return math.inf
    return max((dtype_max(dtype) / (m * scale * g) - 1.0) / beta, 0.0)


def grad_norm(params: Iterable[torch.Tensor]) -> float:
    """``|g|_2`` over all parameters that have a gradient (``inf`` if any entry is not finite)."""
    import torch

    grads = [p.grad.detach().double().reshape(-1) for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.cat(grads)))
    return norm if math.isfinite(norm) else math.inf


def cap_lr_for_overflow(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | float,
    lipschitz: float,
    dtype: Any = "float16",
    *,
    margin: float = 2.0,
) -> float:
    """Set ``group["lr"] = min(group["lr"], eta_safe)`` for every param group, with ``|g|`` read from the
    (already unscaled) gradients of the optimizer's parameters; returns ``eta_safe``. A non-finite
    gradient leaves the LRs alone (``GradScaler`` skips that step anyway) and returns ``inf``."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    g = grad_norm(params)
    if not math.isfinite(g):
        return math.inf
    bound = overflow_safe_lr(g, lipschitz, scaler, dtype, margin=margin)
    for group in optimizer.param_groups:
        group["lr"] = min(group["lr"], bound)
    return bound
