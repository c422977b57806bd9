"""The controller base and the one composition rule, ``schedule x controller``.

It lives with the schedules (floor 2) because it is their composition rule; the controllers themselves
(:mod:`distsched.control`, floor 3) and privacy's ``NoiseAwareLR`` build on it from above.

A schedule is a pure function of the step; a controller is the only stateful schedule-like object.
It watches a training signal (loss, task gradients, curriculum phase) through ``update(signal, step)``
(one signature for all; ``step`` is the 0-based step the signal was measured at) and exposes

* ``multiplier(step)``: the factor applied to the schedule's value (1 when idle), and
* ``schedule_step(step)``: the step at which the schedule is read (``step`` itself, except for a
  warm restart, which reads the schedule from the step of the last restart).

:class:`Controlled` joins them: ``lr(t) = schedule(controller.schedule_step(t)) * controller.multiplier(t)``.
It is a plain callable ``step -> lr``, so it is accepted wherever a schedule is, in particular as the
schedule of :class:`~distsched.schedules.ScheduledLR`. The controller's whole state is in
``state_dict()`` (plain floats and ints), saved in the same checkpoint as the adapter's step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Controller:
    """Base class: a stateful multiplier on a schedule.

    Subclasses keep their state in plain attributes named in ``_state_keys`` and implement
    ``update(signal, step)``; the default ``multiplier`` returns ``self.factor``.
    """

    _state_keys: tuple[str, ...] = ("factor",)

    factor: float = 1.0

    def update(self, signal: Any, step: int | None = None) -> Any:
        """Feed the signal measured at ``step`` (a loss, or what the controller watches); the new
        multiplier applies from ``step + 1`` on. Controllers that need no step ignore it."""
        raise NotImplementedError(f"{type(self).__name__} must implement update(signal, step)")

    def multiplier(self, step: int) -> float:
        """The factor applied to the schedule's value at ``step``."""
        return self.factor

    def schedule_step(self, step: int) -> int:
        """The step at which the schedule is evaluated (``step`` unless the controller restarts it)."""
        return step

    def state_dict(self) -> dict[str, Any]:
        """Everything that must survive a restart, as plain Python values."""
        return {k: _plain(getattr(self, k)) for k in self._state_keys}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = [k for k in self._state_keys if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing keys {missing} for {type(self).__name__}")
        for k in self._state_keys:
            value = state_dict[k]
            setattr(self, k, list(value) if isinstance(value, (list, tuple)) else value)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


class Controlled:
    """``lr(t) = schedule(c.schedule_step(t)) * c.multiplier(t)``: a schedule driven by a controller.

    Use it as the schedule of :class:`~distsched.schedules.ScheduledLR`; call ``controller.update``
    with the new signal before ``scheduler.step()``, so the next LR sees it::

        ctl = PIDController(kp=2.0)
        lrs = ScheduledLR(opt, Controlled(cosine(lr=0.1, total_steps=1000), ctl))
        ...
        ctl.update(loss.item()); lrs.step()
    """

    def __init__(self, schedule: Callable[[int], float], controller: Controller) -> None:
        if not callable(schedule):
            raise ValueError(f"schedule must be callable step -> lr, got {type(schedule).__name__}")
        if not isinstance(controller, Controller):
            raise ValueError(f"controller must be a distsched.control.Controller, got {type(controller).__name__}")
        self.schedule = schedule
        self.controller = controller

    def __call__(self, step: int) -> float:
        c = self.controller
        return float(self.schedule(c.schedule_step(step))) * float(c.multiplier(step))

    def state_dict(self) -> dict[str, Any]:
        """The controller's state (the schedule is code, not state)."""
        return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict["controller"])

    def __repr__(self) -> str:
        return f"Controlled({self.schedule!r}, {type(self.controller).__name__})"
