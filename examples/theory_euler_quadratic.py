"""Explicit Euler (gradient descent) on a quadratic: a step above 2/M diverges, below converges, and
2/(m+M) is the fastest constant step.

Gradient descent ``x <- x - eta A x`` is explicit Euler on the gradient flow ``x' = -A x``. Along an
eigenvector with eigenvalue ``lambda`` the error is multiplied by ``1 - eta lambda`` per step: stable iff
``eta < 2 / M``; the worst factor ``max(|1 - eta m|, |1 - eta M|)`` is smallest at ``eta* = 2 / (m + M)``.
``M`` is measured here by power iteration on Hessian-vector products (``distsched.analysis``).

    python examples/theory_euler_quadratic.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distsched.analysis import stability_bounds, top_eigenvalue
from distsched.report import line_plot


def _quadratic(dim: int, m: float, M: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    evals = torch.linspace(m, M, dim, dtype=torch.float64)
    return q @ torch.diag(evals) @ q.T


def _gd(a: np.ndarray, lr: float, steps: int, x0: np.ndarray) -> np.ndarray:
    x, errs = x0.copy(), [float(np.linalg.norm(x0))]
    for _ in range(steps):
        x = x - lr * (a @ x)
        errs.append(float(np.linalg.norm(x)))
    return np.asarray(errs)


def main(small: bool = False, out: str | None = None) -> dict:
    dim, steps = (8, 60) if small else (50, 300)
    m, M = 1.0, 10.0
    a = _quadratic(dim, m, M, seed=0)
    x = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    est = top_eigenvalue(lambda: 0.5 * x @ a @ x, [x], iters=2000, tol=1e-12)
    a, x0 = a.numpy(), np.ones(dim)
    b = stability_bounds(est.eigenvalue, lambda_min=m)
    runs = {
        "0.95 x 2/M": _gd(a, 0.95 * b.max_stable_lr, steps, x0),
        "1.05 x 2/M": _gd(a, 1.05 * b.max_stable_lr, steps, x0),
        "1/M (descent lemma)": _gd(a, b.descent_lr, steps, x0),
        "2/(m+M)": _gd(a, b.optimal_lr, steps, x0),
    }
    grid = np.linspace(0.02, 0.99, 98) * b.max_stable_lr
    finals = np.array([_gd(a, lr, steps, x0)[-1] for lr in grid])
    best = float(grid[int(np.argmin(finals))])
    res = {
        "lambda_max": est.eigenvalue,
        "max_stable_lr": b.max_stable_lr,
        "optimal_lr": b.optimal_lr,
        "best_grid_lr": best,
        "grid_spacing": float(grid[1] - grid[0]),
        "initial_error": float(np.linalg.norm(x0)),
        "final_error": {k: float(v[-1]) for k, v in runs.items()},
        "rate_optimal": b.rate,
        "measured_rate_optimal": float((runs["2/(m+M)"][-1] / runs["2/(m+M)"][0]) ** (1 / steps)),
    }
    print(f"lambda_max (power iteration) = {est.eigenvalue:.6f}  (exact {M})")
    print(f"2/M = {b.max_stable_lr:.4f}, 1/M = {b.descent_lr:.4f}, 2/(m+M) = {b.optimal_lr:.4f}, "
          f"best on a grid of {len(grid)} = {best:.4f}")
    for k, v in res["final_error"].items():
        print(f"  |x_{steps}| with lr = {k:20s}: {v:.3e}")
    print(f"contraction per step at 2/(m+M): predicted {b.rate:.4f}, measured {res['measured_rate_optimal']:.4f}")
    path = Path(out or os.getcwd()) / "theory_euler_quadratic.png"
    it = list(range(steps + 1))
    line_plot(path, {k: (it, np.maximum(v, 1e-300)) for k, v in runs.items()}, logy=True,
              title="GD on a quadratic (m=1, M=10)", xlabel="iteration", ylabel="|x - x*|")
    res["plot"] = str(path)
    return res


if __name__ == "__main__":
    main()
