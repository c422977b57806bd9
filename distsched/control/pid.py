"""PID control of the learning rate on the loss change (a loss spike lowers the next LR)."""

from __future__ import annotations

import math

from distsched._checks import check_finite, check_non_negative, check_positive, check_range
from distsched.schedules.controlled import Controller


class PIDController(Controller):
    """Multiplier ``f_t = clip(1 - u_t, min_factor, max_factor)`` driven by the loss change.

    With the smoothed loss ``s_t = beta * s_{t-1} + (1 - beta) * L_t`` (``s_0 = L_0``,
    ``beta = smoothing``) the error is ``e_t = s_t - s_{t-1}`` (divided by ``|s_{t-1}|`` when
    ``relative``) and the control signal is the textbook PID law (Astrom & Murray, "Feedback
    Systems", ch. 10)::

        u_t = Kp * e_t + Ki * I_t + Kd * (e_t - e_{t-1}),   I_t = clip(I_{t-1} + e_t, +-integral_limit)

    A rising loss (``e_t > 0``) lowers the factor. Anti-windup by conditional integration: while the
    output is saturated, an error that would push it further into saturation is not integrated, so
    the controller recovers as soon as the loss does. A non-finite loss sets ``f_t = min_factor``
    and leaves the state untouched.
    """

    _state_keys = ("factor", "smoothed", "previous", "integral", "last_error", "updates")

    def __init__(
        self,
        kp: float = 1.0,
        ki: float = 0.0,
        kd: float = 0.0,
        *,
        min_factor: float = 0.1,
        max_factor: float = 1.0,
        smoothing: float = 0.0,
        integral_limit: float = math.inf,
        relative: bool = False,
        anti_windup: bool = True,
    ) -> None:
        self.kp = check_finite("kp", kp)
        self.ki = check_finite("ki", ki)
        self.kd = check_finite("kd", kd)
        self.min_factor = check_non_negative("min_factor", min_factor)
        self.max_factor = check_positive("max_factor", max_factor)
        if self.max_factor < self.min_factor:
            raise ValueError(f"max_factor must be >= min_factor={self.min_factor}, got {max_factor!r}")
        if not self.min_factor <= 1.0 <= self.max_factor:
            raise ValueError(
                f"min_factor <= 1 <= max_factor must hold (1 is the idle factor), got {min_factor}, {max_factor}"
            )
        self.smoothing = check_range("smoothing", smoothing, 0.0, 1.0, high_open=True)
        if not (isinstance(integral_limit, (int, float)) and integral_limit > 0):
            raise ValueError(f"integral_limit must be > 0 (inf allowed), got {integral_limit!r}")
        self.integral_limit = float(integral_limit)
        self.relative = bool(relative)
        self.anti_windup = bool(anti_windup)
        self.factor = 1.0
        self.smoothed: float | None = None
        self.previous: float | None = None
        self.integral = 0.0
        self.last_error: float | None = None
        self.updates = 0

    def _output(self, error: float, integral: float) -> float:
        derivative = 0.0 if self.last_error is None else error - self.last_error
        return self.kp * error + self.ki * integral + self.kd * derivative

    def update(self, signal: float, step: int | None = None) -> float:
        """Feed the loss of the step just taken (``step`` is not needed); returns the factor for the next LR."""
        loss = float(signal)
        self.updates += 1
        if not math.isfinite(loss):
            self.factor = self.min_factor
            return self.factor
        b = self.smoothing
        self.smoothed = loss if self.smoothed is None else b * self.smoothed + (1.0 - b) * loss
        if self.previous is None:
            self.previous = self.smoothed
            return self.factor
        error = self.smoothed - self.previous
        if self.relative:
            error /= max(abs(self.previous), 1e-12)
        lim = self.integral_limit
        integral = min(max(self.integral + error, -lim), lim)
        raw = 1.0 - self._output(error, integral)
        if self.anti_windup and (
            (raw < self.min_factor and error * self.ki > 0) or (raw > self.max_factor and error * self.ki < 0)
        ):
            integral = self.integral  # saturated and pushing further: do not integrate
            raw = 1.0 - self._output(error, integral)
        self.integral = integral
        self.last_error = error
        self.previous = self.smoothed
        self.factor = min(max(raw, self.min_factor), self.max_factor)
        return self.factor
