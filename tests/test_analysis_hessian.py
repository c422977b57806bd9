"""Hessian power iteration and Lanczos against torch.linalg.eigvalsh of the full Hessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from distsched.analysis import hessian_stability, lanczos_eigenvalues, stability_bounds, top_eigenvalue


def _problem(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)

    def closure():
        return torch.nn.functional.mse_loss(model(x), y)

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        params, off = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            params[n] = flat[off : off + k].view(s)
            off += k
        return torch.nn.functional.mse_loss(functional_call(model, params, (x,)), y)

    full = torch.autograd.functional.hessian(f, flat0)
    return model, closure, torch.linalg.eigvalsh(full)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_iteration_matches_full_hessian(seed):
    model, closure, eig = _problem(seed)
    est = top_eigenvalue(closure, model.parameters(), iters=1000, tol=1e-10)
    assert est.converged
    assert est.eigenvalue == pytest.approx(float(eig[-1]), rel=1e-5)
    assert float(est.eigenvector.norm()) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_top_k_matches_full_hessian(seed):
    model, closure, eig = _problem(seed)
    n = len(eig)  # 32 parameters
    top = lanczos_eigenvalues(closure, model.parameters(), k=3, steps=n)
    torch.testing.assert_close(top, eig.flip(0)[:3], rtol=1e-6, atol=1e-9)
    few = lanczos_eigenvalues(closure, model.parameters(), k=1, steps=20)
    assert float(few[0]) == pytest.approx(float(eig[-1]), rel=1e-4)


def test_negative_dominant_spectrum_gives_largest_algebraic():
    # loss = 0.5 x^T A x with eigenvalues {-5, 1, 2}: largest magnitude is -5, top eigenvalue is 2
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    a = q @ torch.diag(torch.tensor([-5.0, 1.0, 2.0], dtype=torch.float64)) @ q.T
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    est = top_eigenvalue(lambda: 0.5 * x @ a @ x, [x], iters=2000, tol=1e-12)
    assert est.eigenvalue == pytest.approx(2.0, rel=1e-6)


def test_stability_bounds_closed_form_and_gradient_descent():
    # quadratic 0.5 x^T A x: GD is stable iff lr < 2/M; 2/(m+M) contracts fastest
    evals = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    a = torch.diag(evals)
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    b = hessian_stability(lambda: 0.5 * x @ a @ x, [x], lambda_min=0.5, tol=1e-12, iters=500)
    assert b.lambda_max == pytest.approx(8.0, rel=1e-8)
    assert (b.max_stable_lr, b.descent_lr) == pytest.approx((0.25, 0.125), rel=1e-8)
    assert b.optimal_lr == pytest.approx(2 / 8.5, rel=1e-8) and b.rate == pytest.approx(7.5 / 8.5, rel=1e-8)

    def gd(lr, steps=200):
        z = torch.ones(3, dtype=torch.float64)
        for _ in range(steps):
            z = z - lr * (evals * z)
        return float(z.norm())

    assert gd(b.max_stable_lr * 1.01) > 1.0 > gd(b.max_stable_lr * 0.99)
    assert gd(b.optimal_lr, 50) < min(gd(b.optimal_lr * 0.9, 50), gd(b.optimal_lr * 1.1, 50))
    assert gd(b.optimal_lr, 50) == pytest.approx(b.rate**50 * np.sqrt(2), rel=1e-6)  # two extreme modes


def test_invalid_parameters():
    with pytest.raises(ValueError, match="lambda_max"):
        stability_bounds(0.0)
    with pytest.raises(ValueError, match="lambda_min"):
        stability_bounds(1.0, 2.0)
    x = torch.ones(2, requires_grad=True)
    with pytest.raises(ValueError, match="k must be in"):
        lanczos_eigenvalues(lambda: (x**2).sum(), [x], k=5)
