"""The ``privacy`` block of a training config, validated once at the edge.

    privacy:
      target_epsilon: 3.0        # and/or noise_multiplier; target only: sigma is planned for the run
      delta: 1.0e-5
      max_grad_norm: 1.0
      accountant: rdp            # rdp | prv | gdp
      noise_schedule: constant   # or "step:gamma=0.8,step_size=100", "exponential:ratio=0.5", ...
      lr_coupling: false         # multiply the LR by the noise-aware factor (privacy.NoiseAwareLR)
      mode: auto                 # auto | group | local  (auto: group when the sync rule averages every step)
      reproducible: false        # true: noise and batches from the config's seed -- NOT private (tests only)
      clipping: auto             # auto | hooks | functorch | ew | ghost  (Opacus' grad_sample_mode)
      per_layer: false           # true: per-layer clipping (Opacus' clipping="per_layer"), C split as C/sqrt(P)
      clipping_norms: null       # with per_layer: one threshold per parameter tensor; sensitivity sqrt(sum C_i^2)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from distsched._checks import check_choice, check_int, check_positive, check_range
from distsched.config import from_mapping
from distsched.privacy.accounting import check_accountant, check_delta
from distsched.privacy.clipping import CLIPPING, check_per_layer
from distsched.privacy.noise import ConstantNoise, noise_schedule_from_spec

TRAIN_MODES: tuple[str, ...] = ("auto", "group", "local")


@dataclasses.dataclass
class PrivacyConfig:
    """DP-SGD for a training run."""

    #: the budget; with it alone the noise multiplier (the schedule's level) is planned so that the whole
    #: run spends exactly this much; with ``noise_multiplier`` too, the guard stops the run at the budget.
    target_epsilon: float | None = None
    #: the noise multiplier (level of the noise schedule); without ``target_epsilon`` no step is refused.
    noise_multiplier: float | None = None
    #: delta in (0, 1).
    delta: float = 1e-5
    #: per-example clipping norm C.
    max_grad_norm: float = 1.0
    #: Opacus accountant: rdp, prv or gdp (gdp: constant noise only).
    accountant: str = "rdp"
    #: noise schedule spec (see ``distsched.privacy.noise_schedule_from_spec``).
    noise_schedule: str = "constant"
    #: steps each value of a continuous noise schedule holds (default: 1 / q steps, one expected epoch).
    interval: int | None = None
    #: multiply the LR by ``G^2 / (G^2 + d (sigma C / B)^2)`` estimated from privatized gradients.
    lr_coupling: bool = False
    #: EMA factor of that estimate.
    coupling_beta: float = 0.9
    #: lower bound of the LR factor.
    min_lr_factor: float = 0.0
    #: group: DP-SGD for the whole worker group (noise once); local: DP local SGD (each worker private on its
    #: shard); auto: group when the sync rule averages every step (``fixed`` with ``h: 1``), else local.
    mode: str = "auto"
    #: PRV discretisation error.
    eps_error: float = 0.01
    #: derive the noise and the Poisson batches from the config's ``seed`` (bit-identical reruns and resumes)
    #: instead of a secret per-process seed: the run is then NOT private, and its summary says so.
    reproducible: bool = False
    #: per-example clipping mode (:mod:`distsched.privacy.clipping`): auto, hooks, functorch, ew or ghost.
    clipping: str = "auto"
    #: per-layer clipping (Opacus' ``clipping="per_layer"``): each parameter tensor clipped to its own
    #: threshold ``C_i``; without ``clipping_norms``, ``C_i = max_grad_norm / sqrt(P)`` for ``P`` tensors.
    #: Composes with hooks, functorch and ew (group mode: hooks, ew); ``auto`` picks hooks.
    per_layer: bool = False
    #: with ``per_layer``: the thresholds ``C_i``, one per trainable parameter tensor in the optimizer's order
    #: (``model.parameters()``); the noise scales with the sensitivity ``sqrt(sum_i C_i^2)``.
    clipping_norms: list[float] | None = None

    def __post_init__(self) -> None:
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError("target_epsilon or noise_multiplier is required (give one or both)")
        if self.target_epsilon is not None:
            check_positive("target_epsilon", self.target_epsilon)
        if self.noise_multiplier is not None:
            check_positive("noise_multiplier", self.noise_multiplier)
        check_delta(self.delta)
        check_positive("max_grad_norm", self.max_grad_norm)
        check_accountant(self.accountant)
        shape = noise_schedule_from_spec(self.noise_schedule, total_steps=1)  # the spec parses
        if self.accountant == "gdp" and not isinstance(shape, ConstantNoise):
            raise ValueError(
                f"accountant 'gdp' needs a constant noise multiplier; use rdp or prv for the noise schedule "
                f"{self.noise_schedule!r}"
            )
        if self.interval is not None:
            check_int("interval", self.interval, 1)
        check_range("coupling_beta", self.coupling_beta, 0.0, 1.0, high_open=True)
        check_range("min_lr_factor", self.min_lr_factor, 0.0, 1.0)
        check_choice("mode", self.mode, TRAIN_MODES)
        check_range("eps_error", self.eps_error, 0.0, 1.0, low_open=True)
        check_choice("clipping", self.clipping, CLIPPING)
        if not isinstance(self.reproducible, bool):
            raise ValueError(f"reproducible must be true or false, got {self.reproducible!r}")
        if not isinstance(self.per_layer, bool):
            raise ValueError(f"per_layer must be true or false, got {self.per_layer!r}")
        if self.clipping_norms is not None:
            if not self.per_layer:
                raise ValueError("clipping_norms: per-layer thresholds need per_layer: true")
            if not isinstance(self.clipping_norms, list) or not self.clipping_norms:
                raise ValueError(f"clipping_norms: a non-empty list of thresholds, got {self.clipping_norms!r}")
            for c in self.clipping_norms:
                check_positive("clipping_norms", c)
        if self.per_layer:
            check_per_layer(self.clipping)  # ghost has no per-layer mode

    @property
    def clipping_threshold(self) -> float | list[float] | None:
        """What :func:`~distsched.privacy.private_training` takes as ``max_grad_norm`` once the model is known:
        the flat ``C``, the ``clipping_norms`` list, or ``None`` (per-layer, ``C`` split over the model's
        tensors by :func:`~distsched.privacy.clipping.per_layer_norms`)."""
        if not self.per_layer:
            return self.max_grad_norm
        return None if self.clipping_norms is None else [float(c) for c in self.clipping_norms]


def refuse_unprivatized_signals(*, controller: bool, sync_rule: Any) -> None:
    """With DP on, nothing that steers training may read the raw training loss (it is never privatized, so
    the LR or H would depend on the data at no charge). Refuses a controller and a loss-driven sync rule
    (``uses_loss``, e.g. AdaComm) with one line naming the block; LR- and step-driven rules stay allowed."""
    if controller:
        raise ValueError("controller: a feedback controller reads the raw training loss, which DP-SGD does not "
                         "privatize (epsilon would not cover it); remove the controller block to train with privacy")
    if getattr(sync_rule, "uses_loss", False):
        raise ValueError(f"sync.name: {type(sync_rule).__name__} reads the raw training loss, which DP-SGD does "
                         "not privatize; with privacy use an LR- or step-driven rule (fixed, qsr, post_local)")


def privacy_config(data: Mapping[str, Any] | PrivacyConfig) -> PrivacyConfig:
    """A validated :class:`PrivacyConfig` from a mapping; errors name ``privacy.<key>``."""
    if isinstance(data, PrivacyConfig):
        return data
    if isinstance(data, Mapping) and data.get("clipping_norms") is not None and "max_grad_norm" in data:
        raise ValueError("privacy.max_grad_norm: with clipping_norms the sensitivity is sqrt(sum C_i^2); "
                         "give one of max_grad_norm and clipping_norms")
    return from_mapping(PrivacyConfig, data, prefix="privacy")
