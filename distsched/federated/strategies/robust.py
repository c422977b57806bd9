"""The base of Byzantine-robust strategies: they aggregate the cohort's per-client updates themselves.

A robust strategy sets ``per_client = True``; the simulator then asks the workers for each client's
(clipped) update instead of one weighted sum per chunk, and calls :meth:`RobustStrategy.aggregate`
on the ``(n, d)`` matrix of updates. The server step is FedAvg's, ``x <- x + eta_s * delta``, with
``delta`` the robust aggregate. Client weights are ignored (an attacker controls its sample count).
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from distsched.federated.strategies.base import Strategy


class RobustStrategy(Strategy):
    """A strategy whose update is a robust statistic of the per-client updates."""

    per_client = True

    @abc.abstractmethod
    def aggregate(self, updates: np.ndarray) -> np.ndarray:
        """The aggregate update of the ``(n, d)`` per-client ``updates`` (one row per client)."""

    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        return params + server_lr * delta


def check_updates(updates: np.ndarray) -> np.ndarray:
    updates = np.asarray(updates, dtype=np.float64)
    if updates.ndim != 2 or len(updates) == 0:
        raise ValueError(f"expected a non-empty (clients, params) matrix of updates, got shape {updates.shape}")
    return updates
