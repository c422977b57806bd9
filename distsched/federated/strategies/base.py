"""The strategy interface: what the server does with the cohort's updates.

Conventions: ``params`` is the global model as one flat ``float32`` vector; a client's update is
``delta_k = x_k - x`` (its local model minus the global one); the server receives the sum of weighted
updates ``sum_k w_k delta_k`` with ``sum_k w_k``, turns it into the round's update (by default the mean
``delta = sum_k w_k delta_k / sum_k w_k``; :class:`~distsched.federated.strategies.DifferentialPrivacy`
its noisy estimate) and returns the next global model. The negated mean update ``-delta`` is the
"pseudo-gradient" of Reddi et al. (2021).

Like Flower's ``Strategy`` but smaller: the simulator does sampling, client training and the sums
itself, so a strategy configures clients (:meth:`client_options`), turns the sums into an update
(:meth:`aggregate_sum`) and steps the server (:meth:`step`). A wrapper (DP) may also stop the run
(:meth:`allows_round`) and add fields to each round's record (:meth:`end_round`) and to the summary
(:meth:`summary`). State (momenta, moments, spent budget) lives in ``state_dict`` for checkpoints.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch


class Strategy(abc.ABC):
    """A server optimizer over the mean client update."""

    name: str = "strategy"
    #: the strategy aggregates per-client updates itself (robust strategies: median, trimmed mean, Krum)
    per_client: bool = False
    #: the simulator runs it as buffered asynchronous aggregation (FedBuff), not in synchronous rounds
    asynchronous: bool = False

    def client_options(self, round_: int) -> dict[str, Any]:
        """Extra options for local training this round: ``prox_mu`` (FedProx); ``clip_norm`` and
        ``weighting`` (``"samples"`` or ``"uniform"``) under DP."""
        return {}

    def aggregate_sum(
        self, round_: int, update_sum: np.ndarray, weight_sum: float, unclipped: int, trained: int
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The round's update (float64) from ``sum_k w_k delta_k`` and ``sum_k w_k`` (``unclipped`` of the
        ``trained`` clients were within the clipping norm), and extra fields for the round's record.

        Default: the weighted mean, None when no weight arrived."""
        if weight_sum <= 0.0:
            return None, {}
        return update_sum / weight_sum, {}

    @abc.abstractmethod
    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        """The next global model from ``params`` and the mean update ``delta`` (both flat)."""

    def allows_round(self) -> bool:
        """False when the next round would exceed the privacy budget (always True without one)."""
        return True

    def end_round(self) -> dict[str, Any]:
        """Called once after each round's server step; fields for the round's record (``epsilon``...)."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Fields for the run's summary (``epsilon``, ``delta``, ``noise_multiplier``, ``private``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")
