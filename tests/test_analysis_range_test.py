"""LR range test: divergence found past 2/lambda_max (computed by numpy), state restored exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from distsched.analysis import lr_range_test


def _regression(seed=0, n=64, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    w = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    lam_max = float(np.linalg.eigvalsh(2.0 / n * (x.T @ x).numpy()).max())  # Hessian of the mean squared error
    return x, y, lam_max


def _loss(model, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def _sweep(x, y, batch_size, seed, tmp_path=None):
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.123)
    batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    res = lr_range_test(model, opt, _loss, batches, start_lr=1e-4, end_lr=100.0, num_steps=300)
    assert opt.param_groups[0]["lr"] == 0.123
    return res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_divergence_is_found_past_the_stability_limit(seed, tmp_path):
    # full-batch GD on a quadratic cannot diverge below 2/lambda_max; minibatches (8 x 256) keep the
    # top mode excited, so the sweep stops within a small factor past it
    x, y, lam = _regression(seed, n=2048)
    limit = 2.0 / lam
    full = _sweep(x, y, len(x), seed)
    assert full.diverged_at is not None and full.diverged_at > limit
    res = _sweep(x, y, 256, seed)
    assert res.diverged_at is not None
    assert limit / 1.2 < res.diverged_at < 4.0 * limit
    assert 1e-4 < res.suggested_lr < limit
    assert len(res.lrs) < 300  # stopped early
    np.testing.assert_allclose(np.diff(np.log(res.lrs)), np.log(1e6) / 299, rtol=1e-9)  # exponential sweep
    assert res.plot(tmp_path / "range.png").stat().st_size > 1000


def test_model_and_optimizer_restored_exactly():
    torch.manual_seed(0)
    x, y, _ = _regression(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # give Adam some state
        opt.zero_grad()
        _loss(model, (x, y)).backward()
        opt.step()
    model.eval()
    twin, twin_opt = copy.deepcopy(model), None
    twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-3)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    lr_range_test(model, opt, _loss, batches, start_lr=1e-5, end_lr=1.0, num_steps=40)
    assert not model.training
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
    # the next training steps are bit-identical to those of the untouched twin
    for m, o in ((model, opt), (twin, twin_opt)):
        for _ in range(3):
            o.zero_grad()
            _loss(m, (x, y)).backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_invalid_parameters():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="end_lr"):
        lr_range_test(model, opt, _loss, [], start_lr=1.0, end_lr=0.5)
    with pytest.raises(ValueError, match="num_steps"):
        lr_range_test(model, opt, _loss, [], num_steps=1)
    with pytest.raises(ValueError, match="batches"):
        lr_range_test(model, opt, _loss, [])


def test_sweep_is_exponential_and_respects_group_multipliers():
    x, y, _ = _regression(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 1)).double()
    groups = [{"params": model[0].parameters(), "lr_multiplier": 0.25}, {"params": model[1].parameters()}]
    opt = torch.optim.SGD(groups, lr=0.01)
    seen = []

    def loss_fn(m, batch):
        seen.append([g["lr"] for g in opt.param_groups])
        return _loss(m, batch)

    res = lr_range_test(model, opt, loss_fn, [(x, y)], start_lr=1e-4, end_lr=1e-2, num_steps=5)
    expected = [1e-4 * 100 ** (k / 4) for k in range(5)]
    np.testing.assert_allclose(res.lrs, expected, rtol=1e-12)
    np.testing.assert_allclose([s[1] for s in seen], expected, rtol=1e-12)
    np.testing.assert_allclose([s[0] for s in seen], np.multiply(expected, 0.25), rtol=1e-12)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
