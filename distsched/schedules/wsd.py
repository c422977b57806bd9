"""Warmup-stable-decay (Hu et al. 2024, "MiniCPM"; Hägele et al. 2024, "Scaling Laws and Compute-Optimal
Training Beyond Fixed Training Durations", which introduces the 1-sqrt cooldown)."""

from __future__ import annotations

import dataclasses
import math

from distsched._checks import check_choice, check_int, check_positive
from distsched.schedules.base import Schedule
from distsched.schedules.cosine import _check_min_lr

_DECAYS = ("linear", "cosine", "1-sqrt")


@dataclasses.dataclass(frozen=True)
class WarmupStableDecay(Schedule):
    """Linear warmup ``lr * t / W`` for ``t < W = warmup_steps``, then ``lr`` until the last
    ``D = decay_steps`` steps of ``T = total_steps``, then with ``p = (t - (T - D)) / D`` (held at 1 after T)
    ``v(t) = min_lr + (lr - min_lr) * f(p)``, ``f(p)`` = ``1 - p`` (linear), ``(1 + cos(pi p)) / 2`` (cosine)
    or ``1 - sqrt(p)`` (1-sqrt). Bounds: ``[0, lr]``, and ``>= min_lr`` after warmup.
    """

    lr: float
    total_steps: int
    decay_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0
    decay: str = "linear"

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("total_steps", self.total_steps, 1)
        check_int("decay_steps", self.decay_steps, 1)
        check_int("warmup_steps", self.warmup_steps, 0)
        _check_min_lr(self.min_lr, self.lr)
        check_choice("decay", self.decay, _DECAYS)
        if self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps + decay_steps must be <= total_steps={self.total_steps}, "
                f"got {self.warmup_steps} + {self.decay_steps}"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * step / self.warmup_steps
        start = self.total_steps - self.decay_steps
        if step < start:
            return self.lr
        p = min(step - start, self.decay_steps) / self.decay_steps
        if self.decay == "linear":
            f = 1.0 - p
        elif self.decay == "cosine":
            f = (1.0 + math.cos(math.pi * p)) / 2.0
        else:
            f = 1.0 - math.sqrt(p)
        return self.min_lr + (self.lr - self.min_lr) * f


wsd = WarmupStableDecay
warmup_stable_decay = WarmupStableDecay
