"""The peak LR of a schedule: the reference that :class:`~distsched.schedules.ScheduledLR` divides by
when it scales each param group's own initial LR by the schedule's shape."""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real

from distsched.schedules.compose import Clamp, Join, Scale
from distsched.schedules.coupled import CurriculumSpike


def peak_lr(schedule: Callable[[int], float]) -> float:
    """The schedule's peak LR, read from its parameters (never by sampling it).

    * a schedule with an ``lr`` parameter: ``lr`` (the peak of every catalogue LR schedule; for a
      growing one such as ``exponential`` with ``gamma > 1`` it is the starting value);
    * ``scale``: ``factor * peak(inner)``; ``clamp``: ``min(max(peak(inner), min_lr), max_lr)``;
      ``join``: the largest peak of its pieces; ``curriculum_spike``: the largest of its phases' peaks
      and ``spike_lr``;
    * anything else holding a ``.schedule`` (``warmup``, ``repeat``, ``phase_shift``, a controller's
      ``Controlled``): the peak of that schedule.

    Raises ``ValueError`` when none applies (a plain function, a noise schedule without ``lr``).
    """
    if isinstance(schedule, Scale):
        return schedule.factor * peak_lr(schedule.schedule)
    if isinstance(schedule, Clamp):
        return min(max(peak_lr(schedule.schedule), schedule.min_lr), schedule.max_lr)
    if isinstance(schedule, Join):
        return max(peak_lr(s) for s in schedule.schedules)
    if isinstance(schedule, CurriculumSpike):
        return max([schedule.spike_lr] + [peak_lr(s) for s in schedule.phases])
    lr = getattr(schedule, "lr", None)
    if isinstance(lr, Real) and not isinstance(lr, bool):
        return float(lr)
    inner = getattr(schedule, "schedule", None)
    if callable(inner):
        return peak_lr(inner)
    raise ValueError(
        f"cannot tell the peak lr of {type(schedule).__name__} (it has no 'lr' parameter): pass "
        f"peak=... or multipliers=[...] to ScheduledLR"
    )
