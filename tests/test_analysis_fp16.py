"""Overflow-safe LR against real FP16/BF16 casts and torch's GradScaler."""

from __future__ import annotations

import math

import pytest
import torch

from distsched.analysis import dtype_max, overflow_safe_lr


def test_dtype_max_is_torch_finfo():
    assert dtype_max(torch.float16) == 65504.0
    assert dtype_max("bfloat16") == float(torch.finfo(torch.bfloat16).max)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [2.0**8, 2.0**14])
def test_bound_is_tight_on_a_concave_quadratic(dtype, scale):
    # f(x) = -beta/2 x^2: g = -beta x, after x' = x - lr g the gradient grows by exactly (1 + lr beta),
    # the worst case of |g'| <= (1 + lr beta)|g|; the scaled gradient is cast to the low-precision dtype.
    beta = 3.0
    big = dtype_max(dtype) / scale
    x0 = -0.05 * big / beta  # |g| = 5% of the largest unscaled gradient
    g = -beta * x0
    lr = overflow_safe_lr(abs(g), beta, scale, dtype, margin=1.0)

    def scaled_next_grad(step_lr):
        x1 = x0 - step_lr * g
        return torch.tensor(scale * -beta * x1, dtype=torch.float64).to(dtype)

    assert torch.isfinite(scaled_next_grad(lr * 0.99))
    assert not torch.isfinite(scaled_next_grad(lr * 1.05))
    assert lr == pytest.approx((dtype_max(dtype) / (scale * abs(g)) - 1) / beta)


def test_reads_the_loss_scale_of_a_grad_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    assert overflow_safe_lr(0.5, 10.0, scaler) == pytest.approx((65504 / (2 * 2**12 * 0.5) - 1) / 10)
    # a real overflow halves the scale: the bound grows accordingly
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler.scale((p * torch.tensor([math.inf, 1.0])).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**11
    assert overflow_safe_lr(0.5, 10.0, scaler) == pytest.approx((65504 / (2 * 2**11 * 0.5) - 1) / 10)


def test_edge_cases_and_errors():
    assert overflow_safe_lr(0.0, 1.0, 1024.0) == math.inf
    assert overflow_safe_lr(1.0, 0.0, 1024.0) == math.inf
    assert overflow_safe_lr(1e4, 1.0, 1024.0) == 0.0  # already overflowing: no safe step
    with pytest.raises(ValueError, match="margin"):
        overflow_safe_lr(1.0, 1.0, 1.0, margin=0.5)
    with pytest.raises(ValueError, match="loss_scale"):
        overflow_safe_lr(1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="dtype"):
        overflow_safe_lr(1.0, 1.0, 1.0, dtype="int8")


def test_cap_lr_in_a_grad_scaler_loop():
    # f(w) = -beta/2 |w|^2 (worst case): after unscale_ the bound caps the LR, the step is taken, and the
    # next scaled gradient, cast to FP16, is finite; with the uncapped LR it would overflow.
    from distsched.analysis import cap_lr_for_overflow, grad_norm

    beta, scale = 4.0, 2.0**10
    w = torch.nn.Parameter(torch.full((4,), 2.0, dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=100.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    scaler.scale(-0.5 * beta * (w**2).sum()).backward()
    scaler.unscale_(opt)
    g = grad_norm([w])
    assert g == pytest.approx(beta * 2.0 * 2.0)  # |beta w| = 4 * |(2, 2, 2, 2)|
    bound = cap_lr_for_overflow(opt, scaler, beta, torch.float16, margin=1.0)
    assert bound == pytest.approx((65504 / (scale * g) - 1) / beta)
    assert opt.param_groups[0]["lr"] == bound < 100.0
    scaler.step(opt)
    scaler.update()
    next_scaled = (scaler.get_scale() * beta * w.detach()).to(torch.float16)
    assert torch.isfinite(next_scaled).all()
    uncapped = (scale * beta * (2.0 + 100.0 * beta * 2.0) * torch.ones(4)).to(torch.float16)
    assert not torch.isfinite(uncapped).all()
    # a generous bound leaves a small LR alone
    opt.param_groups[0]["lr"] = 1e-6
    with torch.no_grad():
        w.fill_(0.01)
    opt.zero_grad()
    scaler.scale(-0.5 * beta * (w**2).sum()).backward()
    scaler.unscale_(opt)
    assert cap_lr_for_overflow(opt, scaler, beta) > 1e-6 and opt.param_groups[0]["lr"] == 1e-6
