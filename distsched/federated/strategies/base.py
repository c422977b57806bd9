"""The strategy interface: what the server does with the cohort's mean update.

Conventions: ``params`` is the global model as one flat ``float32`` vector; a client's update is
``delta_k = x_k - x`` (its local model minus the global one); the server receives the weighted
mean ``delta = sum_k w_k delta_k / sum_k w_k`` (or its DP estimate) and returns the next global
model. The negated mean update ``-delta`` is the "pseudo-gradient" of Reddi et al. (2021).

Four methods, like Flower's ``Strategy`` but smaller: the simulator does sampling, client
training and aggregation of sums itself, so a strategy only configures clients and steps the
server. State (momenta, moments) lives in ``state_dict`` for checkpoints.
"""

from __future__ import annotations

import abc
from typing import Any

import torch


class Strategy(abc.ABC):
    """A server optimizer over the mean client update."""

    name: str = "strategy"

    def client_options(self, round_: int) -> dict[str, Any]:
        """Extra options for local training this round (e.g. ``{"prox_mu": 0.01}``)."""
        return {}

    @abc.abstractmethod
    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        """The next global model from ``params`` and the mean update ``delta`` (both flat)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")
