"""Gradient-conflict scaling for multi-task training: lower the LR while task gradients disagree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from distsched._checks import check_range
from distsched.schedules.controlled import Controller

if TYPE_CHECKING:
    import torch


def _flat(grad: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    import torch

    if isinstance(grad, torch.Tensor):
        return grad.detach().reshape(-1).double()
    return torch.cat([g.detach().reshape(-1).double() for g in grad])


def task_gradients(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One flat gradient per task loss w.r.t. the shared ``params`` (the graph is kept)."""
    import torch

    params = list(params)
    out = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]))
    return out


def pairwise_cosines(grads: Sequence[torch.Tensor | Sequence[torch.Tensor]]) -> list[float]:
    """``cos(g_i, g_j) = <g_i, g_j> / (|g_i| |g_j|)`` for every pair ``i < j`` (0 when a norm is 0)."""
    flats = [_flat(g) for g in grads]
    out = []
    for i in range(len(flats)):
        for j in range(i + 1, len(flats)):
            a, b = flats[i], flats[j]
            den = float(a.norm() * b.norm())
            out.append(float(a @ b) / den if den > 0 else 0.0)
    return out


class GradientConflictScaler(Controller):
    """``f = factor`` while the task gradients conflict, else 1.

    Conflict (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"): the smallest pairwise
    cosine similarity ``c_t = min_{i<j} cos(g_i, g_j)``, smoothed ``s_t = beta * s_{t-1} + (1 - beta) c_t``,
    is below ``threshold`` (default 0: the gradients point into opposite half-spaces).
    """

    _state_keys = ("factor", "cosine", "smoothed", "conflicting_updates", "updates")

    def __init__(self, threshold: float = 0.0, factor: float = 0.5, *, smoothing: float = 0.0) -> None:
        self.threshold = check_range("threshold", threshold, -1.0, 1.0)
        self.reduce_factor = check_range("factor", factor, 0.0, 1.0)
        self.smoothing = check_range("smoothing", smoothing, 0.0, 1.0, high_open=True)
        self.factor = 1.0
        self.cosine: float | None = None
        self.smoothed: float | None = None
        self.conflicting_updates = 0
        self.updates = 0

    @property
    def conflicting(self) -> bool:
        return self.smoothed is not None and self.smoothed < self.threshold

    def update(self, signal: Sequence[torch.Tensor | Sequence[torch.Tensor]], step: int | None = None) -> float:
        """Feed one gradient per task (flat tensors or lists of per-parameter tensors; ``step`` is not
        needed); returns the factor."""
        grads = signal
        if len(grads) < 2:
            raise ValueError(f"grads must hold at least 2 task gradients, got {len(grads)}")
        c = min(pairwise_cosines(grads))
        b = self.smoothing
        self.cosine = c
        self.smoothed = c if self.smoothed is None else b * self.smoothed + (1.0 - b) * c
        self.updates += 1
        if self.conflicting:
            self.conflicting_updates += 1
            self.factor = self.reduce_factor
        else:
            self.factor = 1.0
        return self.factor
