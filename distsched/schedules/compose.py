"""Composition: warmup in front of any schedule, join at boundaries, scale, clamp, repeat."""

from __future__ import annotations

import bisect
import dataclasses
import math

from distsched._checks import check_choice, check_increasing, check_int, check_non_negative, check_range
from distsched.schedules.base import Schedule


@dataclasses.dataclass(frozen=True)
class Warmup(Schedule):
    """Warmup of ``warmup_steps`` steps in front of ``schedule``.

    Linear: ``v(t) = s(0) * (f + (1 - f) * t / W)`` for ``t < W``;
    exponential: ``v(t) = s(0) * f^(1 - t / W)`` (needs ``f > 0``);
    afterwards ``v(t) = s(t - W)``: the wrapped schedule sees steps counted from the end of warmup
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    """

    schedule: Schedule
    warmup_steps: int
    start_factor: float = 0.0
    mode: str = "linear"

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup_steps, 0)
        check_choice("mode", self.mode, ("linear", "exponential"))
        if self.mode == "exponential":
            check_range("start_factor", self.start_factor, 0.0, 1.0, low_open=True)
        else:
            check_range("start_factor", self.start_factor, 0.0, 1.0)

    def __call__(self, step: int) -> float:
        w = self.warmup_steps
        if step >= w:
            return self.schedule(step - w)
        target = self.schedule(0)
        frac = step / w
        if self.mode == "linear":
            return target * (self.start_factor + (1.0 - self.start_factor) * frac)
        return target * self.start_factor ** (1.0 - frac)


@dataclasses.dataclass(frozen=True)
class Join(Schedule):
    """Piecewise sequence: ``schedules[i]`` runs from ``boundaries[i-1]`` to ``boundaries[i]``,
    and sees steps counted from its own start (optax ``join_schedules``)."""

    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", tuple(self.schedules))
        object.__setattr__(self, "boundaries", check_increasing("boundaries", self.boundaries, 1))
        if len(self.schedules) != len(self.boundaries) + 1:
            raise ValueError(
                f"boundaries must have len(schedules) - 1 = {len(self.schedules) - 1} entries, "
                f"got {len(self.boundaries)}"
            )

    def __call__(self, step: int) -> float:
        i = bisect.bisect_right(self.boundaries, step)
        start = self.boundaries[i - 1] if i > 0 else 0
        return self.schedules[i](step - start)


@dataclasses.dataclass(frozen=True)
class Scale(Schedule):
    """``v(t) = factor * s(t)``."""

    schedule: Schedule
    factor: float

    def __post_init__(self) -> None:
        check_non_negative("factor", self.factor)

    def __call__(self, step: int) -> float:
        return self.factor * self.schedule(step)


@dataclasses.dataclass(frozen=True)
class Clamp(Schedule):
    """``v(t) = min(max(s(t), min_lr), max_lr)``."""

    schedule: Schedule
    min_lr: float = 0.0
    max_lr: float = math.inf

    def __post_init__(self) -> None:
        check_non_negative("min_lr", self.min_lr)
        if not self.max_lr >= self.min_lr:
            raise ValueError(f"max_lr must be >= min_lr={self.min_lr}, got {self.max_lr!r}")

    def __call__(self, step: int) -> float:
        return min(max(self.schedule(step), self.min_lr), self.max_lr)


@dataclasses.dataclass(frozen=True)
class Repeat(Schedule):
    """``v(t) = s(t mod period)``: cycle a schedule every ``period`` steps."""

    schedule: Schedule
    period: int

    def __post_init__(self) -> None:
        check_int("period", self.period, 1)

    def __call__(self, step: int) -> float:
        return self.schedule(step % self.period)


warmup = Warmup
join = Join
scale = Scale
clamp = Clamp
repeat = Repeat
