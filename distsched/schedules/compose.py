"""Composition: warmup in front of any schedule, join at boundaries, scale, clamp, repeat."""

from __future__ import annotations

import bisect
import dataclasses
import math

from distsched._checks import check_choice, check_increasing, check_int, check_non_negative, check_range
from distsched.schedules.base import Schedule


def _shorten(schedule: Schedule, warmup_steps: int) -> Schedule:
    """``schedule`` with its ``total_steps`` (found directly or through ``scale``/``clamp``) cut by
    ``warmup_steps``: what remains of the run after the warmup."""
    if isinstance(schedule, (Scale, Clamp)):
        inner = _shorten(schedule.schedule, warmup_steps)
        return schedule if inner is schedule.schedule else dataclasses.replace(schedule, schedule=inner)
    names = {f.name for f in dataclasses.fields(schedule) if f.init} if dataclasses.is_dataclass(schedule) else ()
    if warmup_steps == 0 or "total_steps" not in names:
        return schedule
    total = schedule.total_steps
    if not warmup_steps < total:
        raise ValueError(
            f"warmup_steps must be < total_steps={total} of the {type(schedule).__name__} (total_steps counts "
            f"the whole run, warmup included), got {warmup_steps}"
        )
    try:
        return dataclasses.replace(schedule, total_steps=total - warmup_steps)
    except ValueError as exc:
        raise ValueError(f"after warmup_steps={warmup_steps} of total_steps={total}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Warmup(Schedule):
    """Warmup of ``W = warmup_steps`` steps in front of ``schedule``; ``total_steps`` is the whole run.

    Linear: ``v(t) = s'(0) * (f + (1 - f) * t / W)`` for ``t < W``;
    exponential: ``v(t) = s'(0) * f^(1 - t / W)`` (needs ``f > 0``);
    afterwards ``v(t) = s'(t - W)`` (Goyal et al. 2017, "Accurate, Large Minibatch SGD").

    ``s'`` is ``schedule`` with ``total_steps`` (its own, or that of the schedule inside a ``scale`` or
    ``clamp``) replaced by ``total_steps - W``: as in HF's ``get_*_schedule_with_warmup`` and timm,
    ``total_steps`` counts the whole run, warmup included, so ``warmup(cosine(lr, total_steps=T), W)``
    lasts T steps and is at ``min_lr`` at step T. A schedule without ``total_steps`` (``step``,
    ``multistep``, ``exponential``, ``inverse_sqrt``, ``cosine_restarts``...) is unchanged, ``s' = s``:
    its steps (``step_size``, ``milestones``, cycles) count from the end of warmup, as in torch's
    ``SequentialLR``.
    """

    schedule: Schedule
    warmup_steps: int
    start_factor: float = 0.0
    mode: str = "linear"
    _after: Schedule | None = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        check_int("warmup_steps", self.warmup_steps, 0)
        check_choice("mode", self.mode, ("linear", "exponential"))
        if self.mode == "exponential":
            check_range("start_factor", self.start_factor, 0.0, 1.0, low_open=True)
        else:
            check_range("start_factor", self.start_factor, 0.0, 1.0)
        after = _shorten(self.schedule, self.warmup_steps) if isinstance(self.schedule, Schedule) else self.schedule
        object.__setattr__(self, "_after", after)

    def __call__(self, step: int) -> float:
        w = self.warmup_steps
        after = self._after
        if step >= w:
            return after(step - w)
        target = after(0)
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
