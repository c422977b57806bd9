"""FedAdagrad (Reddi et al. 2021, Algorithm 2): ``v_t = v_{t-1} + delta_t^2``."""

from __future__ import annotations

import torch

from distsched.federated.strategies._adaptive import AdaptiveServer


class FedAdagrad(AdaptiveServer):
    name = "fedadagrad"

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v + delta_sq
