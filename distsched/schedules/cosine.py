"""Constant, cosine annealing and cosine with warm restarts (Loshchilov & Hutter 2017, "SGDR")."""

from __future__ import annotations

import dataclasses
import math

from distsched._checks import check_int, check_non_negative, check_positive, check_range
from distsched.schedules.base import Schedule


def _check_min_lr(min_lr: float, lr: float) -> None:
    check_non_negative("min_lr", min_lr)
    if min_lr > lr:
        raise ValueError(f"min_lr must be in [0, lr={lr}], got {min_lr!r}")


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
    """``v(t) = min_lr + (lr - min_lr) * (1 + cos(pi * min(t, T) / T)) / 2`` with ``T = total_steps``.

    Stays at ``min_lr`` after ``T``. Same values as torch's ``CosineAnnealingLR(T_max=T, eta_min=min_lr)``
    for ``t <= T``; torch's recursive form keeps going past ``T_max`` (back up, periodically), ours holds.
    Bounds: ``min_lr <= v(t) <= lr``.
    """

    lr: float
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("total_steps", self.total_steps, 1)
        _check_min_lr(self.min_lr, self.lr)

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps)
        return self.min_lr + (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * t / self.total_steps)) / 2.0


@dataclasses.dataclass(frozen=True)
class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Cycle ``i`` lasts ``T_i = cycle_steps * cycle_mult^i`` steps (``T_0``, ``T_mult`` in the paper and in
    torch's ``CosineAnnealingWarmRestarts``); within it, at ``T_cur`` steps from its start,
    ``v(t) = min_lr + (peak_i - min_lr) * (1 + cos(pi * T_cur / T_i)) / 2`` with the per-cycle decayed peak
    ``peak_i = max(lr * cycle_decay^i, min_lr)``. With ``cycle_decay = 1`` the values equal torch's.
    Bounds: ``min_lr <= v(t) <= lr``.
    """

    lr: float
    cycle_steps: int
    cycle_mult: int = 1
    min_lr: float = 0.0
    cycle_decay: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("cycle_steps", self.cycle_steps, 1)
        check_int("cycle_mult", self.cycle_mult, 1)
        _check_min_lr(self.min_lr, self.lr)
        check_range("cycle_decay", self.cycle_decay, 0.0, 1.0, low_open=True)

    def cycle(self, step: int) -> tuple[int, int, int]:
        """``(i, T_cur, T_i)``: the cycle index, the steps into it and its length, in exact integers."""
        t0, m = self.cycle_steps, self.cycle_mult
        if m == 1:
            i, cur = divmod(step, t0)
            return i, cur, t0

        def start(n: int) -> int:  # first step of cycle n: T_0 (m^n - 1) / (m - 1)
            return t0 * (m**n - 1) // (m - 1)

        n = int(math.log(step * (m - 1) / t0 + 1, m))
        while start(n + 1) <= step:
            n += 1
        while n > 0 and start(n) > step:
            n -= 1
        return n, step - start(n), t0 * m**n

    def __call__(self, step: int) -> float:
        i, cur, length = self.cycle(step)
        peak = self.lr if i == 0 or self.cycle_decay == 1.0 else max(self.lr * self.cycle_decay**i, self.min_lr)
        return self.min_lr + (peak - self.min_lr) * (1.0 + math.cos(math.pi * cur / length)) / 2.0


constant = Constant
cosine = Cosine
cosine_restarts = CosineRestarts
