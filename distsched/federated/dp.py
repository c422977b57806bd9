"""DP-FedAvg with user-level privacy (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models") and adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping").

Each client's update is clipped to norm ``C`` on the worker; the server adds Gaussian noise once per
round to the sum and divides by the expected cohort size ``m = qN`` (the fixed-denominator estimator):
``delta = (sum_k clip_C(delta_k) + N(0, (z_delta * C)^2 I)) / m``.

Adaptive clipping estimates the fraction of unclipped updates privately from the centred bits
``b_k - 1/2`` (``b_k = 1[||delta_k|| <= C]``), whose sum has sensitivity 1/2 when one client is added or
removed: ``b = (sum_k (b_k - 1/2) + N(0, sigma_b^2)) / m + 1/2``, and moves ``C`` geometrically toward
the target quantile ``gamma``: ``C <- C * exp(-eta_C * (b - gamma))``. With that sensitivity the two
releases together are one Gaussian mechanism with noise multiplier ``z`` (Andrew et al. 2021, Thm. 1),
so the update noise multiplier is ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` and the accountant is
charged ``z``. (An uncentred count ``sum_k b_k`` has sensitivity 1 and would need ``sigma_b^-2`` there.)
Accounting: Poisson sampling with ``q = m / N``, one step per round (shared
:mod:`distsched.privacy` accountant and :class:`~distsched.privacy.BudgetGuard`).

Randomness: the noise and the cohort sampling come from a secret per-process seed
(:mod:`distsched.privacy.randomness`) unless ``dp.reproducible: true`` derives them from the config's seed
(then the run is not private). The metrics ``train_loss`` and ``unclipped_fraction`` (the raw fraction,
not the noised one the clipping norm follows) are never privatized: each DP round record lists them
under ``not_private`` (:data:`NOT_PRIVATE_METRICS`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from distsched._checks import check_non_negative, check_positive, check_range

# distsched.privacy is imported where DP is used, not here: importing any of it loads the package, hence
# Opacus (seconds of start-up), which a simulation without a dp block never needs (tests/test_fed_imports.py).

#: round-record keys computed from the clients' data without noise: not for publication.
NOT_PRIVATE_METRICS: tuple[str, ...] = ("train_loss", "unclipped_fraction")


def sampling_seed(seed: int, dp_reproducible: bool | None) -> int:
    """The cohort sampler's seed: the config's without DP or with ``dp.reproducible``, else a secret one."""
    if dp_reproducible is None or dp_reproducible:
        return seed
    from distsched.privacy.randomness import secret_seed  # DP only (see the imports)

    return secret_seed()


class DPFedAvg:
    """Noise and (adaptive) clipping for one aggregate per round.

    Args:
        noise_multiplier: ``z``, the total noise multiplier charged to the accountant.
        clip_norm: initial clipping norm ``C``.
        expected_cohort: ``m``, the expected number of clients per round.
        adaptive: move ``C`` toward the ``target_quantile`` of update norms.
        target_quantile: ``gamma`` in [0, 1].
        clip_lr: ``eta_C`` > 0.
        count_noise_std: ``sigma_b`` (counts); default ``m / 20`` (Andrew et al. 2021, Sec. 3).
        reproducible: ``False``: :meth:`aggregate` without a generator draws from a secret one.
    """

    def __init__(
        self,
        noise_multiplier: float,
        clip_norm: float,
        expected_cohort: float,
        *,
        adaptive: bool = False,
        target_quantile: float = 0.5,
        clip_lr: float = 0.2,
        count_noise_std: float | None = None,
        reproducible: bool = False,
    ) -> None:
        from distsched.privacy.randomness import noise_generator  # DP only (see the imports)

        self.reproducible = bool(reproducible)
        self._secret = noise_generator()  # never saved: a resumed run draws fresh noise
        self.noise_multiplier = check_positive("dp.noise_multiplier", noise_multiplier)
        self.clip_norm = check_positive("dp.clip_norm", clip_norm)
        self.expected_cohort = check_positive("expected_cohort", expected_cohort)
        self.adaptive = bool(adaptive)
        self.target_quantile = check_range("dp.target_quantile", target_quantile, 0.0, 1.0)
        self.clip_lr = check_positive("dp.clip_lr", clip_lr)
        sigma_b = expected_cohort / 20.0 if count_noise_std is None else count_noise_std
        self.count_noise_std = check_non_negative("dp.count_noise_std", sigma_b)
        if self.adaptive and not 2.0 * self.count_noise_std > self.noise_multiplier:
            raise ValueError(
                f"dp.count_noise_std must be > noise_multiplier / 2 = {self.noise_multiplier / 2} with adaptive "
                f"clipping (else no noise is left for the update), got {self.count_noise_std!r}"
            )

    @property
    def update_noise_multiplier(self) -> float:
        """``z_delta``: ``z`` with fixed clipping, ``(z^-2 - (2 sigma_b)^-2)^(-1/2)`` with adaptive clipping."""
        z = self.noise_multiplier
        if not self.adaptive:
            return z
        return (z**-2 - (2.0 * self.count_noise_std) ** -2) ** -0.5

    def aggregate(
        self, update_sum: np.ndarray, unclipped: int, trained: int, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """The noisy mean update (float64) from the sum of clipped updates of the ``trained`` clients, of
        which ``unclipped`` were within the norm; updates ``clip_norm`` when adaptive (the returned mean
        used the norm in force during the round). ``generator=None``: the secret generator."""
        if generator is None:
            generator = self._secret
        std = self.update_noise_multiplier * self.clip_norm
        noise = torch.randn(len(update_sum), generator=generator, dtype=torch.float64).numpy()
        mean = (np.asarray(update_sum, dtype=np.float64) + std * noise) / self.expected_cohort
        if self.adaptive:
            count_noise = float(torch.randn(1, generator=generator, dtype=torch.float64)) * self.count_noise_std
            b = centred_unclipped_fraction(unclipped, trained, count_noise, self.expected_cohort)
            self.clip_norm = next_clip_norm(self.clip_norm, b, self.target_quantile, self.clip_lr)
        return mean

    def state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_norm = check_positive("clip_norm", state["clip_norm"])


def centred_unclipped_fraction(unclipped: int, trained: int, count_noise: float, expected_cohort: float) -> float:
    """``(sum_k (b_k - 1/2) + noise) / m + 1/2`` with ``sum_k b_k = unclipped`` over ``trained`` clients:
    the private unclipped fraction whose released sum has sensitivity 1/2 (Andrew et al. 2021, Sec. 3)."""
    return (unclipped - 0.5 * trained + count_noise) / expected_cohort + 0.5


def next_clip_norm(clip_norm: float, unclipped_fraction: float, target_quantile: float, clip_lr: float) -> float:
    """Geometric update ``C * exp(-eta_C * (b - gamma))`` (Andrew et al. 2021, Eq. 3)."""
    return clip_norm * math.exp(-clip_lr * (unclipped_fraction - target_quantile))
