"""Cosine annealing (Loshchilov & Hutter 2017, "SGDR")."""

from __future__ import annotations

import dataclasses
import math

from distsched._checks import check_int, check_non_negative, check_positive
from distsched.schedules.base import Schedule


@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    """``v(t) = lr``."""

    lr: float

    def __post_init__(self) -> None:
        check_non_negative("lr", self.lr)

    def __call__(self, step: int) -> float:
        return self.lr


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    """``v(t) = min_lr + (lr - min_lr) * (1 + cos(pi * min(t, T) / T)) / 2`` with ``T = total_steps``;
    stays at ``min_lr`` after ``T``. Same values as torch's ``CosineAnnealingLR`` for ``t <= T``."""

    lr: float
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("total_steps", self.total_steps, 1)
        check_non_negative("min_lr", self.min_lr)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps)
        return self.min_lr + (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t / self.total_steps)) / 2.0


constant = Constant
cosine = Cosine
