"""Coupled schedules: out-of-phase cycles for a generator/discriminator pair, a rate coupled to a
diffusion noise schedule, and curriculum phases with a spike before consolidation."""

from __future__ import annotations

import dataclasses
import math

from distsched._checks import check_increasing, check_int, check_positive, check_range
from distsched.schedules.base import Schedule
from distsched.schedules.compose import Join
from distsched.schedules.cosine import Constant


def _check_schedule(name: str, value: object) -> None:
    if not isinstance(value, Schedule):
        raise ValueError(f"{name} must be a Schedule, got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class PhaseShift(Schedule):
    """``v(t) = s(t + round(phase * period))``: ``s`` shifted by a fraction of its period.

    ``period`` defaults to ``schedule.period`` (e.g. :class:`Cyclic`). ``phase = 0.5`` puts two cyclical
    rates in antiphase, for a generator/discriminator pair (see :func:`out_of_phase`).
    """

    schedule: Schedule
    phase: float = 0.5
    period: int | None = None
    _offset: int = dataclasses.field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        _check_schedule("schedule", self.schedule)
        check_range("phase", self.phase, 0.0, 1.0, high_open=True)
        period = self.period if self.period is not None else getattr(self.schedule, "period", None)
        if period is None:
            raise ValueError(f"period is required for a {type(self.schedule).__name__} (it has no .period)")
        check_int("period", period, 1)
        object.__setattr__(self, "_offset", int(round(self.phase * period)))

    def __call__(self, step: int) -> float:
        return self.schedule(step + self._offset)


def out_of_phase(schedule: Schedule, phase: float = 0.5, period: int | None = None) -> tuple[Schedule, Schedule]:
    """``(schedule, PhaseShift(schedule, phase, period))``: e.g. generator and discriminator rates."""
    return schedule, PhaseShift(schedule, phase, period)


@dataclasses.dataclass(frozen=True)
class LinearBeta(Schedule):
    """Linear diffusion noise ``beta_t = beta_start + (beta_end - beta_start) * t / (T - 1)`` for
    ``t < T = total_steps``, held after (Ho et al. 2020, "DDPM")."""

    total_steps: int
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        check_int("total_steps", self.total_steps, 1)
        check_range("beta_start", self.beta_start, 0.0, 1.0, low_open=True, high_open=True)
        check_range("beta_end", self.beta_end, 0.0, 1.0, low_open=True, high_open=True)

    def __call__(self, step: int) -> float:
        if self.total_steps == 1:
            return self.beta_start
        t = min(step, self.total_steps - 1)
        frac = t / (self.total_steps - 1)
        return (1.0 - frac) * self.beta_start + frac * self.beta_end


@dataclasses.dataclass(frozen=True)
class CosineBeta(Schedule):
    """Cosine diffusion noise (Nichol & Dhariwal 2021, "Improved DDPM"):
    ``beta_t = min(1 - abar(t + 1) / abar(t), max_beta)`` with ``abar(t) = f(t) / f(0)``,
    ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``, for ``t < T = total_steps``, held after."""

    total_steps: int
    s: float = 0.008
    max_beta: float = 0.999

    def __post_init__(self) -> None:
        check_int("total_steps", self.total_steps, 1)
        check_range("s", self.s, 0.0, 1.0, low_open=True)
        check_range("max_beta", self.max_beta, 0.0, 1.0, low_open=True, high_open=True)

    def _f(self, t: float) -> float:
        return math.cos((t / self.total_steps + self.s) / (1.0 + self.s) * math.pi / 2.0) ** 2

    def __call__(self, step: int) -> float:
        t = min(step, self.total_steps - 1)
        return min(1.0 - self._f(t + 1) / self._f(t), self.max_beta)


@dataclasses.dataclass(frozen=True)
class DiffusionCoupled(Schedule):
    """``v(t) = lr / (1 + beta_t)`` over a noise schedule ``beta`` (e.g. :class:`LinearBeta`,
    :class:`CosineBeta`): the step shrinks where the noise is high. Bounds for ``beta`` in ``[0, 1]``:
    ``[lr / 2, lr]``."""

    lr: float
    noise: Schedule

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        _check_schedule("noise", self.noise)

    def __call__(self, step: int) -> float:
        return self.lr / (1.0 + self.noise(step))


@dataclasses.dataclass(frozen=True)
class CurriculumSpike(Schedule):
    """Curriculum phases joined at ``boundaries`` (each phase sees steps from its own start), with a brief
    spike of ``spike_lr`` for the first ``spike_steps`` steps of the last (consolidation) phase, which then
    starts from its own step 0. Phases: Bengio et al. 2009, "Curriculum Learning"; the re-warming spike
    as in SGDR (Loshchilov & Hutter 2017)."""

    phases: tuple[Schedule, ...]
    boundaries: tuple[int, ...]
    spike_lr: float
    spike_steps: int = 1
    _join: Schedule | None = dataclasses.field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        if len(self.phases) < 2:
            raise ValueError(
                f"phases must hold at least 2 schedules (the last is consolidation), got {len(self.phases)}"
            )
        for i, p in enumerate(self.phases):
            _check_schedule(f"phases[{i}]", p)
        object.__setattr__(self, "boundaries", check_increasing("boundaries", self.boundaries, 1))
        if len(self.boundaries) != len(self.phases) - 1:
            raise ValueError(
                f"boundaries must have len(phases) - 1 = {len(self.phases) - 1} entries, got {len(self.boundaries)}"
            )
        check_positive("spike_lr", self.spike_lr)
        check_int("spike_steps", self.spike_steps, 0)
        if self.spike_steps == 0:
            join = Join(self.phases, self.boundaries)
        else:
            last = self.boundaries[-1]
            join = Join(
                self.phases[:-1] + (Constant(self.spike_lr), self.phases[-1]),
                self.boundaries + (last + self.spike_steps,),
            )
        object.__setattr__(self, "_join", join)

    def __call__(self, step: int) -> float:
        return self._join(step)


phase_shift = PhaseShift
linear_beta = LinearBeta
cosine_beta = CosineBeta
diffusion_coupled = DiffusionCoupled
curriculum_spike = CurriculumSpike
