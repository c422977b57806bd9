"""DP-SGD wrapper against plain Opacus, the LR-noise coupling, and the budget guard in a real training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distsched.privacy import (
    NoiseAwareLR,
    PoissonBatches,
    StepNoise,
    epsilon,
    expected_sq_distance_after_step,
    optimal_step_quadratic,
    poisson_loader,
    private_training,
    update_noise_std,
)


def _data(n=200, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long()
    return TensorDataset(x, y)


def _model(d=6, seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 2))


def _step(model, optimizer, batch):
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_wrapper_takes_the_same_steps_as_plain_opacus():
    data = _data()
    batches = [next(iter(DataLoader(data, batch_size=20, shuffle=True, generator=torch.Generator().manual_seed(i))))
               for i in range(6)]
    # plain Opacus: q = 1 / len(loader) = 0.1, expected batch 20
    ref_model = _model()
    engine = PrivacyEngine(accountant="rdp")
    ref_m, ref_opt, _ = engine.make_private(
        module=ref_model, optimizer=torch.optim.SGD(ref_model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=20), noise_multiplier=1.3, max_grad_norm=1.0,
        noise_generator=torch.Generator().manual_seed(7),
    )
    for b in batches:
        _step(ref_m, ref_opt, b)
    ours_model = _model()
    pt = private_training(ours_model, torch.optim.SGD(ours_model.parameters(), lr=0.1), sample_rate=0.1,
                      expected_batch_size=20, max_grad_norm=1.0, delta=1e-5, noise=1.3, target_epsilon=10.0,
                      noise_seed=7)
    for b in batches:
        assert pt.allows_next_step()
        _step(pt.model, pt.optimizer, b)
        pt.after_step()
    for p_ref, p_ours in zip(ref_m.parameters(), pt.model.parameters()):
        torch.testing.assert_close(p_ref, p_ours, rtol=0, atol=0)
    assert pt.epsilon == pytest.approx(engine.get_epsilon(1e-5), rel=1e-12)
    assert pt.accountant.history == [(1.3, 0.1, 6)]


def test_poisson_batches_are_resumable_and_have_the_right_rate():
    s = PoissonBatches(np.arange(1000), 0.05, seed=3, rank=1)
    it = iter(s)
    first = [next(it) for _ in range(200)]
    sizes = np.array([len(b) for b in first])
    assert abs(sizes.mean() - 50) < 3 * np.sqrt(1000 * 0.05 * 0.95 / 200) + 0.5
    resumed = PoissonBatches(np.arange(1000), 0.05, seed=3, rank=1)
    resumed.load_state_dict({"step": 150})
    it2 = iter(resumed)
    assert [next(it2) for _ in range(50)] == first[150:]
    other_rank = PoissonBatches(np.arange(1000), 0.05, seed=3, rank=0)
    assert next(iter(other_rank)) != first[0]


def test_poisson_loader_handles_empty_batches():
    data = _data(n=4)
    loader = poisson_loader(data, np.arange(4), 0.3, seed=0)
    shapes = [tuple(next(iter_)[0].shape) for iter_ in [iter(loader)] for _ in range(30)]
    assert any(s[0] == 0 for s in shapes) and all(s[1:] == (6,) for s in shapes)


# -- LR tied to the noise -------------------------------------------------------------------


def test_update_noise_std_formula():
    assert update_noise_std(0.5, 2.0, 1.5, 300) == pytest.approx(0.5 * 2.0 * 1.5 / 300)


def test_quadratic_derivation_optimal_step_minimizes_expected_distance():
    h, dim, s = 2.0, 50, 0.3
    e = np.full(dim, 0.2)  # w - w*
    g2 = float(np.sum((h * e) ** 2))
    eta_star = optimal_step_quadratic(h, g2, dim, s)
    grid = np.linspace(0.0, 1.0 / h, 20001)
    values = [expected_sq_distance_after_step(h, eta, float(e @ e), dim, s) for eta in grid]
    assert grid[int(np.argmin(values))] == pytest.approx(eta_star, abs=1.0 / h / 20000)
    # and a Monte Carlo check of the expectation itself at eta*
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, s, size=(20000, dim))
    after = e - eta_star * (h * e + noise)
    assert np.mean(np.sum(after**2, axis=1)) == pytest.approx(
        expected_sq_distance_after_step(h, eta_star, float(e @ e), dim, s), rel=0.01)


def test_noise_aware_lr_estimates_the_signal_from_noisy_gradients():
    dim, s = 400, 0.05
    g = torch.full((dim,), 0.04)  # ||g||^2 = 0.64, d s^2 = 1.0
    ctl = NoiseAwareLR(dim, beta=0.98)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        noisy = g + s * torch.randn(dim, generator=gen)
        ctl.update(float(noisy.pow(2).sum()), s)
    true_g2 = float(g.pow(2).sum())
    assert ctl.signal == pytest.approx(true_g2, rel=0.1)
    assert ctl.factor == pytest.approx(true_g2 / (true_g2 + dim * s**2), rel=0.1)
    # noise only: the estimate goes to ~0 and the factor to min_factor
    ctl0 = NoiseAwareLR(dim, beta=0.98, min_factor=0.05)
    for _ in range(600):
        ctl0.update(float((s * torch.randn(dim, generator=gen)).pow(2).sum()), s)
    assert ctl0.factor < 0.1
    restored = NoiseAwareLR(dim, beta=0.98)
    restored.load_state_dict(ctl.state_dict())
    assert restored.factor == ctl.factor and restored.signal == ctl.signal


class _Spy:
    """Records every attribute read through it (and through the parameters it hands out)."""

    def __init__(self, target, log, prefix=""):
        object.__setattr__(self, "_t", target)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_p", prefix)

    def __getattr__(self, name):
        self._log.add(self._p + name)
        value = getattr(self._t, name)
        if name == "params":
            return [_Spy(p, self._log, "param.") for p in value]
        return value


def test_lr_controller_reads_only_privatized_quantities():
    data = _data()
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), sample_rate=0.1, expected_batch_size=20,
                      max_grad_norm=1.0, delta=1e-5, noise=1.0, lr_coupling=True)
    x, y = data.tensors[0][:20], data.tensors[1][:20]
    _step(pt.model, pt.optimizer, (x, y))
    log: set[str] = set()
    factor = NoiseAwareLR(pt.lr_controller.dim).observe(_Spy(pt.optimizer, log))
    assert log == {"params", "param.grad", "noise_multiplier", "max_grad_norm", "expected_batch_size"}
    # the privatized gradient alone determines it: wiping per-example and summed gradients changes nothing
    for p in pt.optimizer.params:
        p.grad_sample = torch.full_like(p.grad_sample, 1e6)
        p.summed_grad = torch.full_like(p.summed_grad, 1e6)
    again = NoiseAwareLR(pt.lr_controller.dim).observe(pt.optimizer)
    assert again == factor
    sq = sum(float(p.grad.double().pow(2).sum()) for p in pt.optimizer.params)
    s = 1.0 * 1.0 / 20
    expected = max(0.0, sq - pt.lr_controller.dim * s**2)
    assert factor == pytest.approx(expected / (expected + pt.lr_controller.dim * s**2), rel=1e-12)


# -- the budget guard in a training loop ----------------------------------------------------


def _train(pt, loader, state=None, max_steps=10_000, stop_after=None):
    """Train until the guard refuses a step (or ``stop_after`` steps); return (steps taken, checkpoint)."""
    it = iter(loader)
    taken = 0
    while taken < max_steps:
        if stop_after is not None and taken == stop_after:
            break
        if not pt.allows_next_step():
            break
        _step(pt.model, pt.optimizer, next(it))
        pt.after_step()
        taken += 1
    ckpt = {
        "model": {k: v.clone() for k, v in pt.model.state_dict().items()},
        "optimizer": pt.optimizer.state_dict(),
        "privacy": pt.state_dict(),
        "sampler": loader.batch_sampler.state_dict(),
    }
    return taken, ckpt


def _make(target, seed=0):
    data = _data(n=400)
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), sample_rate=0.05, expected_batch_size=20,
                      max_grad_norm=1.0, delta=1e-5, noise=StepNoise(sigma=1.2, gamma=0.9, step_size=15),
                      target_epsilon=target, noise_seed=seed)
    return pt, poisson_loader(data, np.arange(400), 0.05, seed=seed)


def test_guard_stops_training_at_the_budget_and_resume_cannot_reset_it():
    target = 2.0
    pt, loader = _make(target)
    steps, ckpt = _train(pt, loader)
    sched = StepNoise(sigma=1.2, gamma=0.9, step_size=15)
    hist = sched.segments(steps, 0.05)
    assert epsilon(hist, 1e-5) <= target < epsilon(sched.segments(steps + 1, 0.05), 1e-5)  # stopped exactly there
    ref = RDPAccountant()
    ref.history = [tuple(s) for s in hist]
    assert pt.epsilon == pytest.approx(ref.get_epsilon(delta=1e-5), rel=1e-12)
    # resume from the checkpoint in fresh objects: not one more step
    pt2, loader2 = _make(target)
    pt2.model.load_state_dict(ckpt["model"])
    pt2.load_state_dict(ckpt["privacy"])
    more, _ = _train(pt2, loader2)
    assert more == 0
    assert pt2.accountant.steps == steps
    # a resume with a larger target is refused; a smaller one is kept
    pt3, _ = _make(50.0)
    with pytest.raises(ValueError, match="privacy.target_epsilon: .* cannot raise it to 50"):
        pt3.load_state_dict(ckpt["privacy"])
    pt4, loader4 = _make(1.0)
    pt4.load_state_dict(ckpt["privacy"])
    assert pt4.guard.target_epsilon == 1.0 and _train(pt4, loader4)[0] == 0


def test_interrupted_run_equals_uninterrupted_run():
    target = 2.0
    full, loader = _make(target)
    n_full, ck_full = _train(full, loader)
    part, loader_a = _make(target)
    n_a, ck_a = _train(part, loader_a, stop_after=n_full // 2)
    torch.manual_seed(12345)  # the global RNG is irrelevant: the noise generator is in the checkpoint
    resumed, loader_b = _make(target)
    resumed.model.load_state_dict(ck_a["model"])
    resumed.optimizer.load_state_dict(ck_a["optimizer"])
    resumed.load_state_dict(ck_a["privacy"])
    loader_b.batch_sampler.load_state_dict(ck_a["sampler"])
    n_b, ck_b = _train(resumed, loader_b)
    assert n_a + n_b == n_full
    assert resumed.accountant.history == full.accountant.history
    for k, v in ck_full["model"].items():
        torch.testing.assert_close(ck_b["model"][k], v, rtol=0, atol=0)
