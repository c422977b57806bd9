"""FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): clients minimise
``f_k(w) + mu/2 * ||w - x||^2``; the server averages like FedAvg."""

from __future__ import annotations

from typing import Any

import torch

from distsched._checks import check_non_negative
from distsched.federated.strategies.base import Strategy


class FedProx(Strategy):
    name = "fedprox"

    def __init__(self, mu: float = 0.01) -> None:
        self.mu = check_non_negative("mu", mu)

    def client_options(self, round_: int) -> dict[str, Any]:
        return {"prox_mu": self.mu}

    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        return params + server_lr * delta
