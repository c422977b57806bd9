"""Curvature and stable step sizes from Hessian-vector products (the Hessian is never formed).

For a loss with Hessian eigenvalues ``m <= lambda <= M`` gradient descent ``x <- x - eta grad f``
on the local quadratic model is stable iff ``eta < 2 / M``; the descent lemma guarantees decrease
for ``eta <= 1 / M`` (L-smoothness with ``L = M``); the constant step minimising the contraction
factor ``max |1 - eta lambda|`` is ``eta* = 2 / (m + M)`` with rate ``(M - m) / (M + m)``
(Nesterov 2004, "Introductory Lectures on Convex Optimization", thm 2.1.15; Cohen et al. 2021,
"Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from distsched._checks import check_int, check_non_negative, check_positive

if TYPE_CHECKING:
    import torch


class HessianOperator:
    """``v -> H v`` for the loss returned by ``closure()`` at the current ``params`` (Pearlmutter 1994):
    ``H v = grad(<grad L, v>)``, one double backward per product. Vectors are flat."""

    def __init__(self, closure: Callable[[], torch.Tensor], params: Iterable[torch.Tensor]) -> None:
        import torch

        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("params must contain at least one tensor with requires_grad=True, got none")
        loss = closure()
        self._grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.products = 0

    def __call__(self, vec: torch.Tensor) -> torch.Tensor:
        import torch

        chunks, offset = [], 0
        for p in self.params:
            chunks.append(vec[offset : offset + p.numel()].view_as(p).to(p.dtype))
            offset += p.numel()
        dot = sum((g * v).sum() for g, v in zip(self._grads, chunks))
        hv = torch.autograd.grad(dot, self.params, retain_graph=True, allow_unused=True)
        self.products += 1
        return torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1) for p, h in zip(self.params, hv)])


@dataclasses.dataclass(frozen=True)
class EigenEstimate:
    """A top Hessian eigenvalue by power iteration: value, unit eigenvector, products used."""

    eigenvalue: float
    eigenvector: torch.Tensor
    iterations: int
    converged: bool


def _power(op: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor, shift: float, iters: int, tol: float):
    lam, converged, k = 0.0, False, 0
    for k in range(1, iters + 1):  # noqa: B007 - k is reported
        w = op(v) - shift * v
        new = float(v @ w)  # Rayleigh quotient of (H - shift I)
        norm = float(w.norm())
        if norm == 0.0:
            return 0.0, v, k, True
        v = w / norm
        if k > 1 and abs(new - lam) <= tol * max(abs(new), 1e-12):
            lam, converged = new, True
            break
        lam = new
    return lam, v, k, converged


def top_eigenvalue(
    closure: Callable[[], torch.Tensor],
    params: Iterable[torch.Tensor],
    *,
    iters: int = 200,
    tol: float = 1e-6,
    seed: int = 0,
) -> EigenEstimate:
    """Largest (algebraic) Hessian eigenvalue ``lambda_max`` by power iteration on ``H v``.

    Power iteration converges to the eigenvalue of largest magnitude; if that one is negative, a
    second run on ``H - lambda_1 I`` (all eigenvalues >= 0) gives ``lambda_max - lambda_1``.
    Stops when the Rayleigh quotient changes by less than ``tol`` (relative).
    """
    import torch

    check_int("iters", iters, 1)
    check_positive("tol", tol)
    op = HessianOperator(closure, params)
    gen = torch.Generator().manual_seed(seed)
    v0 = torch.randn(op.dim, generator=gen, dtype=op.dtype)
    v0 = v0 / v0.norm()
    lam, v, k, conv = _power(op, v0, 0.0, iters, tol)
    if lam < 0:
        shifted, v, k2, conv = _power(op, v0, lam, iters, tol)
        lam, k = shifted + lam, k + k2
    return EigenEstimate(lam, v.detach(), k, conv)


def lanczos_eigenvalues(
    closure: Callable[[], torch.Tensor],
    params: Iterable[torch.Tensor],
    k: int = 5,
    *,
    steps: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The ``k`` largest Hessian eigenvalues (descending) by Lanczos with full reorthogonalisation:
    ``steps`` Hessian-vector products build a tridiagonal ``T`` whose eigenvalues (Ritz values)
    approximate the extreme eigenvalues of ``H`` (Golub & Van Loan, "Matrix Computations", sec. 10.1).
    Default ``steps = min(dim, max(3k, 30))``."""
    import torch

    k = check_int("k", k, 1)
    op = HessianOperator(closure, params)
    n = op.dim
    if k > n:
        raise ValueError(f"k must be in [1, {n}] (the number of parameters), got {k}")
    m = min(n, max(3 * k, 30)) if steps is None else check_int("steps", steps, k)
    m = min(m, n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64)
    q = q / q.norm()
    basis = [q]
    alphas, betas = [], []
    for j in range(m):
        w = op(basis[j].to(op.dtype)).detach().to(torch.float64)
        alpha = float(basis[j] @ w)
        alphas.append(alpha)
        Q = torch.stack(basis)
        w = w - Q.T @ (Q @ w)  # full reorthogonalisation (twice is enough)
        w = w - Q.T @ (Q @ w)
        beta = float(w.norm())
        if j == m - 1 or beta < 1e-10:
            break
        betas.append(beta)
        basis.append(w / beta)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(T).flip(0)
    return ritz[: min(k, len(ritz))]


@dataclasses.dataclass(frozen=True)
class StabilityBounds:
    """Step sizes from the curvature: ``max_stable_lr = 2 / M``, ``descent_lr = 1 / M`` and, given
    ``m``, ``optimal_lr = 2 / (m + M)`` with contraction ``rate = (M - m) / (M + m)``."""

    lambda_max: float
    max_stable_lr: float
    descent_lr: float
    lambda_min: float | None = None
    optimal_lr: float | None = None
    rate: float | None = None


def stability_bounds(lambda_max: float, lambda_min: float | None = None) -> StabilityBounds:
    """The bounds of :class:`StabilityBounds` from ``M = lambda_max`` (> 0) and optionally ``m``
    (``0 <= m <= M``)."""
    M = check_positive("lambda_max", lambda_max)
    if lambda_min is None:
        return StabilityBounds(M, 2.0 / M, 1.0 / M)
    m = check_non_negative("lambda_min", lambda_min)
    if m > M:
        raise ValueError(f"lambda_min must be in [0, lambda_max={M}], got {lambda_min!r}")
    return StabilityBounds(M, 2.0 / M, 1.0 / M, m, 2.0 / (m + M), (M - m) / (M + m))


def hessian_stability(
    closure: Callable[[], torch.Tensor],
    params: Iterable[torch.Tensor],
    *,
    lambda_min: float | None = None,
    iters: int = 200,
    tol: float = 1e-6,
    seed: int = 0,
) -> StabilityBounds:
    """Power-iteration ``lambda_max`` of the loss on one batch, turned into :class:`StabilityBounds`."""
    est = top_eigenvalue(closure, params, iters=iters, tol=tol, seed=seed)
    if not (est.eigenvalue > 0 and math.isfinite(est.eigenvalue)):
        raise ValueError(f"lambda_max must be > 0 for a stability bound, got {est.eigenvalue!r} (non-convex batch?)")
    return stability_bounds(est.eigenvalue, lambda_min)
