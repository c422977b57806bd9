"""FedBuff: buffered asynchronous aggregation (Nguyen et al. 2022, "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS, Algorithm 1).

Up to ``max_concurrency`` clients train at once, each on the model version that was current when it
started; the server adds each arriving update to a buffer and steps once ``buffer_size`` (``K``) updates
are in. An update that started at version ``v`` and arrives at version ``t`` has staleness ``tau = t - v``
and enters with the weight ``s(tau)``:

``delta_t = sum_{k in buffer} s(tau_k) n_k delta_k / sum_{k in buffer} n_k``,   ``x_{t+1} = x_t + eta_t delta_t``.

With equal client sizes ``n_k`` this is the paper's ``(1/K) sum_k s(tau_k) delta_k``; with zero staleness
it is FedAvg's weighted mean of the ``K`` updates. Staleness functions (Xie et al. 2019, "Asynchronous
Federated Optimization", Sec. 3): ``polynomial`` ``s(tau) = (1 + tau)^(-a)`` (``a = 1/2`` is the
paper's ``1/sqrt(1 + tau)``), ``hinge`` ``s(tau) = 1`` for ``tau <= b`` else ``1 / (a (tau - b) + 1)``,
``constant`` ``s = 1``.

The server LR is the control signal: ``eta_t = eta(t) * (1 + mean_k tau_k)^(-c)``, the configured
schedule ``strategy.server_lr`` at server step ``t`` times a polynomial in the buffer's mean staleness
(FedAsync's staleness-adaptive mixing rate ``alpha_t = alpha s(t - tau)``, Xie et al. 2019, Sec. 3,
applied to the buffer's mean; ``c = 0``, the default, is FedBuff as published). The simulator
(:mod:`distsched.federated.buffered`) draws client latencies and keeps the event queue.
"""

from __future__ import annotations

import numpy as np
import torch

from distsched._checks import check_choice, check_int, check_non_negative
from distsched.federated.strategies.base import Strategy


def staleness_weight(staleness: np.ndarray, kind: str = "polynomial", exponent: float = 0.5,
                     cutoff: float = 4.0) -> np.ndarray:
    """``s(tau)`` of each staleness (module docstring): ``polynomial`` ``(1 + tau)^(-a)``, ``hinge``
    ``1`` up to ``b`` then ``1 / (a (tau - b) + 1)``, ``constant`` ``1`` (``a = exponent``, ``b = cutoff``)."""
    tau = np.asarray(staleness, dtype=np.float64)
    if kind == "constant":
        return np.ones_like(tau)
    if kind == "polynomial":
        return (1.0 + tau) ** -exponent
    return np.where(tau <= cutoff, 1.0, 1.0 / (exponent * (tau - cutoff) + 1.0))


class FedBuff(Strategy):
    """Buffered asynchronous aggregation (module docstring).

    Args:
        buffer_size: ``K``, updates per server step.
        max_concurrency: clients training at once (default: the sampling cohort size).
        staleness: ``polynomial``, ``hinge`` or ``constant``.
        staleness_exponent: ``a``.
        staleness_cutoff: ``b`` (hinge).
        lr_staleness_exponent: ``c`` of the server LR's staleness factor ``(1 + mean tau)^(-c)``.
    """

    name = "fedbuff"
    asynchronous = True

    def __init__(
        self,
        buffer_size: int = 10,
        max_concurrency: int | None = None,
        staleness: str = "polynomial",
        staleness_exponent: float = 0.5,
        staleness_cutoff: float = 4.0,
        lr_staleness_exponent: float = 0.0,
    ) -> None:
        self.buffer_size = check_int("strategy.params.buffer_size", buffer_size, 1)
        self.max_concurrency = (None if max_concurrency is None
                                else check_int("strategy.params.max_concurrency", max_concurrency, 1))
        self.staleness = check_choice("strategy.params.staleness", staleness, ("polynomial", "hinge", "constant"))
        self.staleness_exponent = check_non_negative("strategy.params.staleness_exponent", staleness_exponent)
        self.staleness_cutoff = check_non_negative("strategy.params.staleness_cutoff", staleness_cutoff)
        self.lr_staleness_exponent = check_non_negative("strategy.params.lr_staleness_exponent",
                                                        lr_staleness_exponent)

    def weights(self, staleness: np.ndarray) -> np.ndarray:
        """``s(tau_k)`` for the buffer's updates."""
        return staleness_weight(staleness, self.staleness, self.staleness_exponent, self.staleness_cutoff)

    def lr_factor(self, staleness: np.ndarray) -> float:
        """``(1 + mean_k tau_k)^(-c)``: the server LR's staleness factor (1.0 for ``c = 0``)."""
        if self.lr_staleness_exponent == 0.0 or len(staleness) == 0:
            return 1.0
        return float((1.0 + float(np.mean(staleness))) ** -self.lr_staleness_exponent)

    def aggregate_buffer(self, updates: np.ndarray, sizes: np.ndarray, staleness: np.ndarray) -> np.ndarray:
        """``sum_k s(tau_k) n_k delta_k / sum_k n_k`` (float64, summed in buffer order) of the ``(K, d)``
        ``updates``."""
        updates = np.asarray(updates, dtype=np.float64)
        if updates.ndim != 2 or len(updates) == 0 or len(updates) != len(sizes) or len(sizes) != len(staleness):
            raise ValueError(f"expected K updates, sizes and staleness, got shapes {updates.shape}, "
                             f"{np.shape(sizes)}, {np.shape(staleness)}")
        scale = self.weights(staleness)
        total = np.zeros(updates.shape[1], dtype=np.float64)
        weight = 0.0
        for row, n, s in zip(updates, np.asarray(sizes).tolist(), scale.tolist()):
            total += (n * s) * row
            weight += n
        return total / weight

    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        return params + server_lr * delta
