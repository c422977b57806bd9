"""DP-FedAvg as a wrapper around a server strategy (Flower's ``DifferentialPrivacyClientSideFixedClipping``
and ``...AdaptiveClipping``): user-level DP (McMahan et al. 2018) with client-side clipping, server-side
Gaussian noise on the sum, the fixed denominator ``m = qN``, optional adaptive clipping (Andrew et al.
2021), and the accounting of one Poisson-sampled Gaussian release per round. The mechanism and its
formulas are :class:`distsched.federated.dp.DPFedAvg`; this wrapper tells clients to clip (norm ``C``,
uniform weights), hands the inner strategy the noisy mean and charges the accountant.

Which compositions are meaningful. Only the noisy mean ``(sum_k clip_C(delta_k) + N(0, (z C)^2 I)) / m``
is computed from the clients' data; whatever the server does with it afterwards is post-processing
(Dwork & Roth 2014, Prop. 2.1) and spends no budget. So the wrapper composes with every strategy whose
server step reads only the mean update: FedAvg, FedProx (the proximal term acts before clipping),
FedAvgM, FedAdam, FedYogi, FedAdagrad (DP-FedAdam etc.). It refuses, in one line:

* robust aggregators (FedMedian, trimmed mean, Krum): their output is not a sum, and one client added
  or removed can move a median or Krum's choice by up to ``2C`` (the gap between two neighbouring
  clipped updates), not ``C / m``; noise calibrated for the sum would not cover it;
* FedBuff: its server steps mix updates of clients sampled at different model versions, not one
  Poisson-sampled cohort per step, which is what the accountant charges.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distsched._checks import check_range
from distsched.federated.dp import NOT_PRIVATE_METRICS, DPFedAvg
from distsched.federated.sampling import round_rng
from distsched.federated.strategies.base import Strategy

if TYPE_CHECKING:
    from distsched.privacy import Accountant, BudgetGuard

#: the stream of ``round_rng(seed, round, stream)`` the noise comes from in reproducible mode
NOISE_STREAM = 5


class DifferentialPrivacy(Strategy):
    """``inner`` under DP-FedAvg: clip on the clients, noise on the server, one accountant step per round.

    Args:
        inner: the server strategy that steps on the noisy mean (not a robust one, not FedBuff).
        mechanism: clipping norm, noise and adaptive clipping (:class:`~distsched.federated.dp.DPFedAvg`).
        accountant: charged ``(z, q)`` once per round (held by ``guard`` when one is given).
        sample_rate: ``q``, the Poisson sampling rate of the cohort.
        delta: the ``delta`` epsilon is reported at.
        guard: optional :class:`~distsched.privacy.BudgetGuard`: no round that would exceed its target.
        seed: the noise seed in reproducible mode (``mechanism.reproducible``); ignored otherwise.
    """

    def __init__(
        self,
        inner: Strategy,
        mechanism: DPFedAvg,
        accountant: Accountant,
        sample_rate: float,
        delta: float,
        *,
        guard: BudgetGuard | None = None,
        seed: int = 0,
    ) -> None:
        _check_inner(inner)
        self.inner = inner
        self.name = f"dp+{inner.name}"
        self.mechanism = mechanism
        self.accountant = accountant
        self.guard = guard
        self.sample_rate = check_range("sample_rate", sample_rate, 0.0, 1.0, low_open=True)
        self.delta = delta
        self.seed = int(seed)

    @classmethod
    def build(
        cls,
        inner: Strategy,
        *,
        sample_rate: float,
        expected_cohort: float,
        rounds: int,
        seed: int,
        noise_multiplier: float | None = None,
        clip_norm: float = 1.0,
        target_epsilon: float | None = None,
        delta: float = 1e-5,
        accountant: str = "rdp",
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        count_noise_std: float | None = None,
        reproducible: bool = False,
    ) -> DifferentialPrivacy:
        """The wrapper from the ``dp:`` block's fields; without ``noise_multiplier`` it is planned so that
        ``rounds`` rounds at rate ``sample_rate`` spend exactly ``target_epsilon``
        (:func:`distsched.privacy.plan`)."""
        from distsched.privacy import Accountant, BudgetGuard, plan

        _check_inner(inner)  # before planning the noise
        z = noise_multiplier
        if z is None:
            z = plan(delta=delta, target_epsilon=target_epsilon, sample_rate=sample_rate, steps=rounds,
                     accountant=accountant, solve="noise").noise_multiplier
        mechanism = DPFedAvg(z, clip_norm, expected_cohort, adaptive=adaptive, target_quantile=target_quantile,
                             clip_lr=clip_lr, count_noise_std=count_noise_std, reproducible=reproducible)
        acc = Accountant(accountant)
        guard = BudgetGuard(target_epsilon, delta, acc) if target_epsilon is not None else None
        return cls(inner, mechanism, acc, sample_rate, delta, guard=guard, seed=seed)

    @property
    def noise_multiplier(self) -> float:
        return self.mechanism.noise_multiplier

    def client_options(self, round_: int) -> dict[str, Any]:
        return {**self.inner.client_options(round_), "clip_norm": self.mechanism.clip_norm, "weighting": "uniform"}

    def aggregate_sum(
        self, round_: int, update_sum: np.ndarray, weight_sum: float, unclipped: int, trained: int
    ) -> tuple[np.ndarray | None, dict[str, Any]]:
        """The noisy mean (also for an empty cohort: the release happens every round), with the norm in
        force during the round and the raw unclipped fraction (not private) for the record."""
        info = {"clip_norm": self.mechanism.clip_norm,
                "unclipped_fraction": unclipped / trained if trained else math.nan}
        gen = None  # the mechanism's secret generator
        if self.mechanism.reproducible:
            gen = torch.Generator().manual_seed(int(round_rng(self.seed, round_, NOISE_STREAM).integers(2**62)))
        return self.mechanism.aggregate(update_sum, unclipped, trained, gen), info

    def step(self, params: torch.Tensor, delta: torch.Tensor, server_lr: float) -> torch.Tensor:
        return self.inner.step(params, delta, server_lr)

    def allows_round(self) -> bool:
        return self.guard is None or self.guard.allows((self.noise_multiplier, self.sample_rate))

    def end_round(self) -> dict[str, Any]:
        """Charges the round (one Gaussian release at rate ``q``); the epsilon spent so far."""
        if self.guard is not None:
            self.guard.record(self.noise_multiplier, self.sample_rate)
        else:
            self.accountant.step(self.noise_multiplier, self.sample_rate)
        return {"epsilon": self.accountant.epsilon(self.delta), "not_private": list(NOT_PRIVATE_METRICS)}

    def summary(self) -> dict[str, Any]:
        # the accountant holds the whole run's history, resumed rounds included
        return {"epsilon": self.accountant.epsilon(self.delta), "delta": self.delta,
                "noise_multiplier": self.noise_multiplier, "private": not self.mechanism.reproducible}

    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "dp": self.mechanism.state_dict(),
            "accountant": self.accountant.state_dict(),
            "guard": self.guard.state_dict() if self.guard is not None else None,
            "reproducible": self.mechanism.reproducible,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the inner strategy, the clipping norm and the spent budget; a checkpoint written with a
        budget never loads without one (a smaller new target is kept: ``BudgetGuard``), nor with
        ``dp.reproducible`` flipped (:func:`distsched.privacy.resume.check_reproducible`)."""
        if state.get("guard") is not None and self.guard is None:
            raise ValueError("dp.target_epsilon: the run was started with a privacy budget; resume with the same "
                             "target")
        if "reproducible" in state:  # a checkpoint of a run seeded from its config is never private again
            from distsched.privacy.resume import check_reproducible

            check_reproducible(bool(state["reproducible"]), self.mechanism.reproducible, "dp")
        self.inner.load_state_dict(state["inner"])
        self.mechanism.load_state_dict(state["dp"])
        if state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])  # keeps min(saved, new) target
        else:  # the accountant's history is the spent budget; a new guard reads it from there
            self.accountant.load_state_dict(state["accountant"])


def _check_inner(inner: Strategy) -> None:
    """ValueError (one line) for a strategy DP-FedAvg's accounting does not cover (module docstring)."""
    if inner.per_client:
        raise ValueError(f"strategy.name {inner.name!r} aggregates per-client updates: dp (noise on the "
                         "clipped sum) applies to sum-based strategies only")
    if inner.asynchronous:
        raise ValueError(f"strategy.name {inner.name!r} is asynchronous: dp (one Poisson-sampled cohort "
                         "charged per server step) applies to synchronous strategies only")
