"""The ``controller`` block of the training config: a feedback controller on the schedule.

One mapping, ``{name: <controller>, <parameters>}``, read into a :class:`ControllerConfig` at load time::

    controller: {name: plateau, factor: 0.5, patience: 3}        # ReduceOnPlateau
    controller: {name: pid, kp: 2.0, kd: 0.5, min_factor: 0.1}   # PIDController
    controller: {name: warm_restart, patience: 4, restart_decay: 0.8}
    controller: {name: curriculum, phase_factors: [1.0, 0.5], patience: 3}

The loop runs ``lr(t) = schedule(c.schedule_step(t)) * c.multiplier(t)`` (:class:`~distsched.control.Controlled`)
times the sync engine's LR compensation (and DP's noise-aware factor). The signal is the training loss
averaged over the workers and over the last ``log_every`` steps: the very number written to
``metrics.jsonl``, which the loop already all-reduces for logging, so the controller costs no extra
communication and every rank takes the same decisions. It is fed once per metrics record, after step
``t`` with ``(t + 1) % log_every == 0`` (and after the last step), before the LR of step ``t + 1`` is set
and before the sync rule picks the next round's H. Counts such as ``patience`` are therefore in
metrics records, i.e. in units of ``log_every`` steps.

The signal is a loss, so it is minimized (``mode`` is fixed to ``min``). ``GradientConflictScaler``
needs one gradient per task, which a single-loss loop does not have; use it in your own loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from distsched.config import build
from distsched.control import CONTROLLERS, Controller

#: constructor parameters the config may not set (the signal is a loss: minimized).
_FIXED = ("mode",)
_WHERE = "controller"


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """The ``controller`` block: which controller and its parameters. A controller has state (its best
    loss, its counters), so the config holds its spec, checked at load time by building it once, and each
    worker builds its own with :meth:`build`."""

    #: a key of :data:`distsched.control.CONTROLLERS`: ``pid``, ``plateau``, ``warm_restart``, ``curriculum``.
    name: str
    #: the controller's constructor parameters (``factor``, ``patience``...; ``mode`` is fixed to ``min``).
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: Any, where: str = _WHERE) -> ControllerConfig:
        """The block of a mapping ``{name: <controller>, <parameters>}`` (a :class:`ControllerConfig` is
        returned as is): unknown names, unknown or missing keys and a flag that is not true/false raise
        ``ValueError`` naming ``controller.<key>``; values are checked by the controller itself."""
        if isinstance(spec, ControllerConfig):
            return spec
        if isinstance(spec, Mapping) and spec.get("name") == "gradient_conflict":
            raise ValueError(f"{where}.name 'gradient_conflict' needs per-task gradients, which the training "
                             f"loop does not compute (one loss); use GradientConflictScaler in your own loop")
        build(CONTROLLERS, spec, where, fixed=_FIXED)
        return cls(name=spec["name"], params={k: v for k, v in spec.items() if k != "name"})

    def to_spec(self) -> dict[str, Any]:
        """The mapping :meth:`from_spec` reads back."""
        return {"name": self.name, **self.params}

    def build(self) -> Controller:
        """A fresh controller (state at its start)."""
        return build(CONTROLLERS, self.to_spec(), _WHERE, fixed=_FIXED)


def build_controller(spec: Mapping[str, Any] | ControllerConfig | None) -> Controller | None:
    """The controller of a ``controller`` block (None when the block is absent or null), built by
    :func:`distsched.config.build` from :data:`distsched.control.CONTROLLERS` (:class:`ControllerConfig`)."""
    return None if spec is None else ControllerConfig.from_spec(spec).build()


def update_controller(controller: Controller, loss: float, step: int) -> None:
    """Feed ``loss`` (the workers' mean loss over the window that ended with step ``step``, 0-based);
    the decision applies from step ``step + 1`` on."""
    controller.update(loss, step)
