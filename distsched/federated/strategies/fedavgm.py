"""FedAvgM (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution"): server
momentum on the mean update, ``v <- beta * v + delta``, ``x <- x + eta_s * v``."""

from __future__ import annotations

from typing import Any

import torch

from distsched._checks import check_range
from distsched.federated.strategies.base import Strategy


class FedAvgM(Strategy):
    name = "fedavgm"

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        self.velocity: torch.Tensor | None = None

    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        self.velocity = delta.clone() if self.velocity is None else self.momentum * self.velocity + delta
        return params + server_lr * self.velocity

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = state.get("velocity")
