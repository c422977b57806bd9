"""The learning rate tied to the DP noise.

In DP-SGD the update is ``lr_t * g~_t`` with the privatized mean gradient
``g~_t = (sum_i clip_C(g_i) + N(0, sigma_t^2 C^2 I)) / B``, so the noise on each update has standard
deviation ``lr_t * sigma_t * C / B`` per coordinate (:func:`update_noise_std`).

Noise-aware step size (derivation on a quadratic). Take ``f(w) = h/2 ||w - w*||^2`` in ``d`` dimensions,
gradient ``g = h (w - w*)``, and a noisy gradient ``g~ = g + xi`` with ``xi ~ N(0, s^2 I)``,
``s = sigma C / B``. One step ``w' = w - eta g~`` gives

    E||w' - w*||^2 = (1 - eta h)^2 ||w - w*||^2 + eta^2 d s^2.

Setting the derivative in ``eta`` to zero: ``eta* = (1/h) * ||g||^2 / (||g||^2 + d s^2)``. With
``eta_max = 1/h`` the best noiseless step and ``r = ||g|| / (sqrt(d) s)`` the ratio of the gradient norm
to the noise norm, ``eta* = eta_max * r^2 / (1 + r^2)``: full steps when the signal dominates, steps
shrinking like ``r^2`` when noise dominates. :class:`NoiseAwareLR` is that factor, a multiplier on the
LR schedule (``schedule x controller``), with ``eta_max`` the schedule's value.

``||g||^2`` must not be read from private data. It is estimated from the released noisy gradient only:
``E||g~||^2 = ||g||^2 + d s^2``, so ``||g||^2 ~ EMA(||g~_t||^2 - d s_t^2)`` (bias-corrected like Adam's
moments, clamped at 0). This is post-processing of the DP-SGD output and costs no privacy budget.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.optimizers import DistributedDPOptimizer

from distsched._checks import check_int, check_non_negative, check_positive, check_range
from distsched.schedules.controlled import Controller


def update_noise_std(lr: float, noise_multiplier: float, max_grad_norm: float, batch_size: float) -> float:
    """``lr * sigma * C / B``: per-coordinate std of the noise DP-SGD adds to the parameters in one step."""
    check_non_negative("lr", lr)
    check_non_negative("noise_multiplier", noise_multiplier)
    check_positive("max_grad_norm", max_grad_norm)
    check_positive("batch_size", batch_size)
    return lr * noise_multiplier * max_grad_norm / batch_size


class NoiseAwareLR(Controller):
    """Multiplier ``m_t = G^2 / (G^2 + d s_t^2)`` (at least ``min_factor``), ``G^2`` the running estimate of the
    squared clipped mean-gradient norm from privatized gradients only (see the module docstring).

    Args:
        dim: ``d``, the number of trained parameters.
        beta: EMA factor of the estimate, in [0, 1).
        min_factor: lower bound of the multiplier, in [0, 1].

    Feed it after each optimizer step with :meth:`observe` (an Opacus ``DPOptimizer``: reads ``p.grad``,
    the privatized gradient, and the public ``noise_multiplier``, ``max_grad_norm``, ``expected_batch_size``)
    or with :meth:`update` (the squared norm of the noisy gradient and its noise std).
    """

    _state_keys = ("factor", "moment", "updates", "last_noise_std")

    def __init__(self, dim: int, *, beta: float = 0.9, min_factor: float = 0.0) -> None:
        self.dim = check_int("dim", dim, 1)
        self.beta = check_range("beta", beta, 0.0, 1.0, high_open=True)
        self.min_factor = check_range("min_factor", min_factor, 0.0, 1.0)
        self.factor = 1.0
        self.moment = 0.0  # EMA of ||g~||^2 - d s^2 (not bias-corrected)
        self.updates = 0
        self.last_noise_std = 0.0
        self._params: tuple[Any, list[Any]] | None = None

    @property
    def signal(self) -> float:
        """``G^2``: the bias-corrected estimate of ``||g||^2`` (>= 0)."""
        if self.updates == 0:
            return 0.0
        return max(0.0, self.moment / (1.0 - self.beta**self.updates))

    def factor_for(self, noise_std: float) -> float:
        """``max(min_factor, G^2 / (G^2 + d s^2))`` for noise std ``s`` (1 when ``s = 0``)."""
        check_non_negative("noise_std", noise_std)
        g2 = self.signal
        noise = self.dim * noise_std**2
        if noise == 0.0:
            return 1.0
        return max(self.min_factor, g2 / (g2 + noise))

    def update(self, noisy_grad_sq_norm: float, noise_std: float, next_noise_std: float | None = None) -> float:
        """Add one observation ``||g~||^2`` made with noise std ``s``; the new factor is for ``next_noise_std``
        (default ``s``: the noise of the next step). Returns the factor."""
        check_non_negative("noisy_grad_sq_norm", noisy_grad_sq_norm)
        check_non_negative("noise_std", noise_std)
        unbiased = noisy_grad_sq_norm - self.dim * noise_std**2
        self.moment = self.beta * self.moment + (1.0 - self.beta) * unbiased
        self.updates += 1
        nxt = noise_std if next_noise_std is None else next_noise_std
        self.last_noise_std = float(nxt)
        self.factor = self.factor_for(nxt)
        return self.factor

    def observe(self, optimizer: Any, next_noise_multiplier: float | None = None) -> float:
        """After ``optimizer.step()`` of an Opacus ``DPOptimizer``: read the privatized gradient ``p.grad`` (the
        noisy mean the step used) and the public noise parameters; nothing else is read. The noise std is
        ``sigma C / B``, ``B`` the global expected batch (a ``DistributedDPOptimizer``'s ``expected_batch_size``
        times its world size)."""
        if self._params is None or self._params[0] is not optimizer:
            self._params = (optimizer, list(optimizer.params))  # Opacus rebuilds this list on every access
        norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float64) for p in self._params[1] if p.grad is not None]
        sq = float(torch.stack(norms).pow(2).sum()) if norms else 0.0  # one host sync
        c, b = float(optimizer.max_grad_norm), float(optimizer.expected_batch_size)
        if isinstance(optimizer, DistributedDPOptimizer):  # group mode: the noise, added once, and the sum over
            b *= optimizer.world_size  # ranks are divided by the global expected batch qN = W * (qN / W)
        s = float(optimizer.noise_multiplier) * c / b
        nxt = None if next_noise_multiplier is None else float(next_noise_multiplier) * c / b
        return self.update(sq, s, nxt)

    def __repr__(self) -> str:
        return f"NoiseAwareLR(dim={self.dim}, beta={self.beta}, factor={self.factor:.4g}, G2={self.signal:.4g})"


def optimal_step_quadratic(h: float, grad_sq_norm: float, dim: int, noise_std: float) -> float:
    """``eta* = (1/h) ||g||^2 / (||g||^2 + d s^2)``: the step minimizing ``E||w' - w*||^2`` on the quadratic."""
    check_positive("h", h)
    check_non_negative("grad_sq_norm", grad_sq_norm)
    check_int("dim", dim, 1)
    check_non_negative("noise_std", noise_std)
    denom = grad_sq_norm + dim * noise_std**2
    return (1.0 / h) * (grad_sq_norm / denom if denom > 0 else 1.0)


def expected_sq_distance_after_step(h: float, eta: float, dist_sq: float, dim: int, noise_std: float) -> float:
    """``(1 - eta h)^2 ||w - w*||^2 + eta^2 d s^2``."""
    return (1.0 - eta * h) ** 2 * dist_sq + eta**2 * dim * noise_std**2

