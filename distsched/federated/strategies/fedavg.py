"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): ``x <- x + eta_s * delta`` (``eta_s = 1`` is plain model averaging)."""

from __future__ import annotations

import torch

from distsched.federated.strategies.base import Strategy


class FedAvg(Strategy):
    name = "fedavg"

    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        return params + server_lr * delta
