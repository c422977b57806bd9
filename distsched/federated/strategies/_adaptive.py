"""Shared by FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization",
Algorithm 2), which differ only in the second-moment update:

``m_t = beta1 * m_{t-1} + (1 - beta1) * delta_t``, ``v_t = update(v_{t-1}, delta_t^2)``,
``x_{t+1} = x_t + eta * m_t / (sqrt(v_t) + tau)``, with ``m_{-1} = 0`` and ``v_{-1} = tau^2``.
No bias correction, as in the paper.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from distsched._checks import check_positive, check_range
from distsched.federated.strategies.base import Strategy


class AdaptiveServer(Strategy):
    def __init__(self, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.beta1 = check_range("beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = check_range("beta2", beta2, 0.0, 1.0, high_open=True)
        self.tau = check_positive("tau", tau)
        self.m: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @abc.abstractmethod
    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        """``v_t`` from ``v_{t-1}`` and ``delta_t^2``."""

    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        if self.m is None or self.v is None:
            self.m = torch.zeros_like(delta)
            self.v = torch.full_like(delta, self.tau**2)
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * delta
        self.v = self.second_moment(self.v, delta * delta)
        return params + server_lr * self.m / (self.v.sqrt() + self.tau)

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m, self.v = state.get("m"), state.get("v")
