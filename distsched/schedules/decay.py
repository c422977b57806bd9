"""Monotone decays: step, multistep, exponential, inverse time, inverse power (Robbins-Monro),
polynomial, linear, inverse square root. Each matches torch's scheduler of the same name where one exists."""

from __future__ import annotations

import bisect
import dataclasses
import math

from distsched._checks import check_increasing, check_int, check_non_negative, check_positive, check_range
from distsched.schedules.base import Schedule
from distsched.schedules.cosine import _check_min_lr


def _pow(base: float, exponent: float) -> float:
    """``base ** exponent``, ``inf`` instead of an OverflowError (``gamma > 1`` at a huge step)."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


@dataclasses.dataclass(frozen=True)
class Step(Schedule):
    """``v(t) = lr * gamma^floor(t / step_size)`` (torch ``StepLR``). Bounds for ``gamma <= 1``: ``(0, lr]``."""

    lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("step_size", self.step_size, 1)
        check_positive("gamma", self.gamma)

    def __call__(self, step: int) -> float:
        return self.lr * _pow(self.gamma, step // self.step_size)


@dataclasses.dataclass(frozen=True)
class MultiStep(Schedule):
    """``v(t) = lr * gamma^k(t)``, ``k(t)`` = number of milestones ``<= t`` (torch ``MultiStepLR``).

    Milestones must be strictly increasing (torch also counts repeated milestones twice; we refuse them).
    """

    lr: float
    milestones: tuple[int, ...]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        object.__setattr__(self, "milestones", check_increasing("milestones", self.milestones, 1))
        check_positive("gamma", self.gamma)

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** bisect.bisect_right(self.milestones, step)


@dataclasses.dataclass(frozen=True)
class Exponential(Schedule):
    """``v(t) = lr * gamma^t`` (torch ``ExponentialLR``). ``gamma > 1`` grows (an LR range test)."""

    lr: float
    gamma: float

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_positive("gamma", self.gamma)

    def __call__(self, step: int) -> float:
        return self.lr * _pow(self.gamma, step)


@dataclasses.dataclass(frozen=True)
class InverseTime(Schedule):
    """``v(t) = lr / (1 + decay_rate * t)``: the classic Robbins-Monro rate (Robbins & Monro 1951).

    ``sum v = inf`` and ``sum v^2 < inf`` for any ``decay_rate > 0``. Bounds: ``(0, lr]``.
    """

    lr: float
    decay_rate: float

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_non_negative("decay_rate", self.decay_rate)

    def __call__(self, step: int) -> float:
        return self.lr / (1.0 + self.decay_rate * step)


@dataclasses.dataclass(frozen=True)
class InversePower(Schedule):
    """``v(t) = lr / (1 + t)^power``. Robbins-Monro conditions (``sum v = inf``, ``sum v^2 < inf``)
    hold iff ``0.5 < power <= 1`` (Robbins & Monro 1951; Polyak & Juditsky 1992 use ``power`` < 1).
    Bounds: ``(0, lr]``."""

    lr: float
    power: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_positive("power", self.power)

    def __call__(self, step: int) -> float:
        return self.lr * (1.0 + step) ** -self.power  # underflows to 0, never overflows


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    """``v(t) = min_lr + (lr - min_lr) * (1 - min(t, T) / T)^power`` with ``T = total_steps``.

    With ``min_lr = 0`` the values of torch's ``PolynomialLR(total_iters=T, power=power)``.
    Bounds: ``[min_lr, lr]``.
    """

    lr: float
    total_steps: int
    power: float = 1.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("total_steps", self.total_steps, 1)
        check_positive("power", self.power)
        _check_min_lr(self.min_lr, self.lr)

    def __call__(self, step: int) -> float:
        frac = 1.0 - min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.lr - self.min_lr) * frac**self.power


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
    """``v(t) = lr * (s + (e - s) * min(t, T) / T)`` from ``s = start_factor`` to ``e = end_factor`` over
    ``T = total_steps``, then held (torch ``LinearLR``, whose defaults these are). Bounds: between
    ``lr * s`` and ``lr * e``."""

    lr: float
    total_steps: int = 5
    start_factor: float = 1.0 / 3.0
    end_factor: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("total_steps", self.total_steps, 1)
        check_range("start_factor", self.start_factor, 0.0, 1.0)
        check_range("end_factor", self.end_factor, 0.0, 1.0)

    def __call__(self, step: int) -> float:
        frac = min(step, self.total_steps) / self.total_steps
        # the convex form is exact at both ends (s + (e - s) * 1 can round away from e)
        return self.lr * ((1.0 - frac) * self.start_factor + frac * self.end_factor)


@dataclasses.dataclass(frozen=True)
class InverseSqrt(Schedule):
    """``v(t) = lr / sqrt(1 + t / timescale)``. Bounds: ``(0, lr]``.

    ``Warmup(InverseSqrt(lr, W), W)`` is the Transformer rate (Vaswani et al. 2017, fairseq
    ``inverse_sqrt``): linear warmup to ``lr`` over ``W`` steps, then ``lr * sqrt(W / t)``.
    """

    lr: float
    timescale: float

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_positive("timescale", self.timescale)

    def __call__(self, step: int) -> float:
        return self.lr / math.sqrt(1.0 + step / self.timescale)


step = Step
multistep = MultiStep
exponential = Exponential
inverse_time = InverseTime
inverse_power = InversePower
polynomial = Polynomial
linear = Linear
inverse_sqrt = InverseSqrt
