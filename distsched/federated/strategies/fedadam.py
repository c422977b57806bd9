"""FedAdam (Reddi et al. 2021, Algorithm 2): ``v_t = beta2 * v_{t-1} + (1 - beta2) * delta_t^2``."""

from __future__ import annotations

import torch

from distsched.federated.strategies._adaptive import AdaptiveServer


class FedAdam(AdaptiveServer):
    name = "fedadam"

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1.0 - self.beta2) * delta_sq
