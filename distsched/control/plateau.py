"""Plateau detection: reduce the LR on a plateau, or restart the schedule (warm restart)."""

from __future__ import annotations

import math

from distsched._checks import check_choice, check_int, check_non_negative, check_range
from distsched.schedules.controlled import Controller


class _PlateauDetector(Controller):
    """Counts evaluations without improvement, with torch's ``ReduceLROnPlateau`` semantics:
    better means ``a < best * (1 - threshold)`` (rel) or ``a < best - threshold`` (abs) in
    ``min`` mode (mirrored for ``max``); a plateau fires after more than ``patience`` bad
    evaluations, then ``cooldown`` evaluations are ignored."""

    def __init__(self, mode: str, patience: int, threshold: float, threshold_mode: str, cooldown: int) -> None:
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.patience = check_int("patience", patience, 0)
        self.threshold = check_non_negative("threshold", threshold)
        self.threshold_mode = check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = check_int("cooldown", cooldown, 0)
        self.factor = 1.0
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0
        self.updates = 0

    def _is_better(self, a: float) -> bool:
        t, best = self.threshold, self.best
        if self.mode == "min":
            return a < best * (1.0 - t) if self.threshold_mode == "rel" else a < best - t
        return a > best * (1.0 + t) if self.threshold_mode == "rel" else a > best + t

    def _observe(self, metric: float) -> bool:
        """Record one evaluation; True when a plateau fires."""
        metric = float(metric)
        self.updates += 1
        if self._is_better(metric):
            self.best = metric
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            self.cooldown_counter = self.cooldown
            self.num_bad = 0
            return True
        return False


class ReduceOnPlateau(_PlateauDetector):
    """``f <- max(f * factor, min_factor)`` each time the metric plateaus.

    Same decisions as torch's ``ReduceLROnPlateau`` (a step is skipped when the change is below
    ``eps``), but as a multiplier on any schedule instead of an overwrite of ``group["lr"]``.
    """

    _state_keys = ("factor", "best", "num_bad", "cooldown_counter", "updates", "reductions")

    def __init__(
        self,
        factor: float = 0.1,
        patience: int = 10,
        *,
        mode: str = "min",
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_factor: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(mode, patience, threshold, threshold_mode, cooldown)
        self.reduce_factor = check_range("factor", factor, 0.0, 1.0, low_open=True, high_open=True)
        self.min_factor = check_range("min_factor", min_factor, 0.0, 1.0)
        self.eps = check_non_negative("eps", eps)
        self.reductions = 0

    def update(self, signal: float, step: int | None = None) -> float:
        """Feed one evaluation of the metric (``step`` is not needed); returns the factor for the next LR."""
        if self._observe(signal):
            new = max(self.factor * self.reduce_factor, self.min_factor)
            if self.factor - new > self.eps:
                self.factor = new
                self.reductions += 1
        return self.factor


class WarmRestartOnPlateau(_PlateauDetector):
    """On a plateau, restart the schedule from its step 0 (a warm restart, Loshchilov & Hutter 2017,
    triggered by feedback instead of a fixed period): ``lr(t) = restart_decay^k * s(t - t_k)`` where
    ``t_k`` is the step of the k-th restart. ``best`` is reset at each restart."""

    _state_keys = ("factor", "best", "num_bad", "cooldown_counter", "updates", "restart_step", "restarts")

    def __init__(
        self,
        patience: int = 10,
        *,
        mode: str = "min",
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        restart_decay: float = 1.0,
    ) -> None:
        super().__init__(mode, patience, threshold, threshold_mode, cooldown)
        self.restart_decay = check_range("restart_decay", restart_decay, 0.0, 1.0, low_open=True)
        self.restart_step = 0
        self.restarts = 0

    def schedule_step(self, step: int) -> int:
        return max(step - self.restart_step, 0)

    def update(self, signal: float, step: int | None = None) -> bool:
        """Feed one evaluation taken at ``step`` (default: the number of updates so far, i.e. one
        update per step); returns True when a restart happens. The next LR is ``s(0)``."""
        fired = self._observe(signal)
        if fired:
            self.restart_step = (self.updates if step is None else check_int("step", step, 0) + 1)
            self.restarts += 1
            self.factor *= self.restart_decay
            self.best = math.inf if self.mode == "min" else -math.inf
        return fired
