"""FedYogi (Reddi et al. 2021, Algorithm 2; Zaheer et al. 2018):
``v_t = v_{t-1} - (1 - beta2) * delta_t^2 * sign(v_{t-1} - delta_t^2)``."""

from __future__ import annotations

import torch

from distsched.federated.strategies._adaptive import AdaptiveServer


class FedYogi(AdaptiveServer):
    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return v - (1.0 - self.beta2) * delta_sq * torch.sign(v - delta_sq)
