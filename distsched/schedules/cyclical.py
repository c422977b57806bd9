"""Cyclical rates (Smith 2017, "Cyclical Learning Rates") and the one-cycle policy (Smith & Topin 2019)."""

from __future__ import annotations

import dataclasses
import math

from distsched._checks import check_choice, check_int, check_non_negative, check_positive, check_range
from distsched.schedules.base import Schedule


@dataclasses.dataclass(frozen=True)
class Cyclic(Schedule):
    """Triangular cycles between ``min_lr`` and ``lr`` (torch ``CyclicLR(base_lr=min_lr, max_lr=lr)``).

    With ``P = up + down``, ``c = floor(1 + t / P)``, ``x = 1 + t / P - c``, the ramp is ``x / r`` while
    ``x <= r = up / P`` and ``(x - 1) / (r - 1)`` after it, and
    ``v(t) = min_lr + (lr - min_lr) * ramp * scale``, where ``scale`` is 1 (``triangular``),
    ``1 / 2^(c - 1)`` (``triangular2``) or ``gamma^t`` (``exp_range``). Bounds: ``[min_lr, lr]``.
    Momentum cycling (torch's ``cycle_momentum``) is not part of a learning-rate schedule.
    """

    lr: float
    step_size_up: int
    min_lr: float = 0.0
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("step_size_up", self.step_size_up, 1)
        check_non_negative("min_lr", self.min_lr)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if self.step_size_down is not None:
            check_int("step_size_down", self.step_size_down, 1)
        check_choice("mode", self.mode, ("triangular", "triangular2", "exp_range"))
        check_range("gamma", self.gamma, 0.0, 1.0, low_open=True)

    @property
    def period(self) -> int:
        """Steps per cycle, ``step_size_up + step_size_down``."""
        down = self.step_size_up if self.step_size_down is None else self.step_size_down
        return self.step_size_up + down

    def __call__(self, step: int) -> float:
        total = float(self.period)
        ratio = self.step_size_up / total
        cycle = math.floor(1 + step / total)
        x = 1.0 + step / total - cycle
        ramp = x / ratio if x <= ratio else (x - 1) / (ratio - 1)
        height = (self.lr - self.min_lr) * ramp
        if self.mode == "triangular":
            return self.min_lr + height
        if self.mode == "triangular2":
            return self.min_lr + height * 0.5 ** (cycle - 1)  # = 1 / 2^(c-1), exact; underflows to 0, never overflows
        return self.min_lr + height * self.gamma**step


@dataclasses.dataclass(frozen=True)
class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin 2019), torch ``OneCycleLR(max_lr=lr, ...)`` values.

    From ``lr / div_factor`` up to ``lr`` until step ``pct_start * T - 1``, then down to
    ``lr / div_factor / final_div_factor`` at step ``T - 1`` (``T = total_steps``); with ``three_phase``
    the second phase returns to ``lr / div_factor`` at ``2 * pct_start * T - 2`` and a third goes to the
    final value. ``anneal`` is ``cos`` or ``linear``. Unlike torch (which raises past ``T`` and
    extrapolates at ``t = T``), the value is held after ``T - 1``. Bounds: ``[final value, lr]``.
    """

    lr: float
    total_steps: int
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    three_phase: bool = False
    _phases: tuple[tuple[float, float, float, float], ...] = dataclasses.field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_int("total_steps", self.total_steps, 2)
        check_range("pct_start", self.pct_start, 0.0, 1.0, low_open=True, high_open=True)
        check_range("div_factor", self.div_factor, 1.0, math.inf, high_open=True)
        check_range("final_div_factor", self.final_div_factor, 1.0, math.inf, high_open=True)
        check_choice("anneal", self.anneal, ("cos", "linear"))
        if not isinstance(self.three_phase, bool):
            raise ValueError(f"three_phase must be true or false, got {self.three_phase!r}")
        initial = self.lr / self.div_factor
        final = initial / self.final_div_factor
        t = self.total_steps
        if self.three_phase:
            ends = [float(self.pct_start * t) - 1, float(2 * self.pct_start * t) - 2, t - 1]
            levels = [initial, self.lr, initial, final]
        else:
            ends = [float(self.pct_start * t) - 1, t - 1]
            levels = [initial, self.lr, final]
        starts = [0.0] + ends[:-1]
        if any(e <= s for s, e in zip(starts, ends)):
            raise ValueError(
                f"pct_start={self.pct_start} with total_steps={t} leaves an empty phase: need every phase "
                f"end {ends} strictly after its start {starts}"
            )
        phases = tuple((s, e, a, b) for s, e, a, b in zip(starts, ends, levels, levels[1:]))
        object.__setattr__(self, "_phases", phases)

    def __call__(self, step: int) -> float:
        last = len(self._phases) - 1
        step = min(step, self.total_steps - 1)
        for i, (start, end, a, b) in enumerate(self._phases):
            if step <= end or i == last:
                pct = (step - start) / (end - start)
                if self.anneal == "cos":
                    return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (1.0 - pct) * a + pct * b  # torch's (b - a) * pct + a, but exact at both ends
        raise AssertionError("unreachable")  # pragma: no cover


cyclic = Cyclic
one_cycle = OneCycle
