"""PyTorch adapter: apply a schedule and per-group multipliers to any torch optimizer.

The learning rate is computed in closed form, ``lr_g(t) = schedule(t) * multiplier_g``, from the
step count alone (never the recursive ``lr_t = f(lr_{t-1})`` form), so the adapter's whole state
is the step and a run resumed from ``state_dict`` at any step yields the identical sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from distsched._checks import check_non_negative
from distsched.schedules.base import Schedule

MULTIPLIER_KEY = "lr_multiplier"


def _resolve_multipliers(
    optimizer: Optimizer, multipliers: Sequence[float] | Sequence[Mapping[str, Any]] | None
) -> list[float]:
    groups = optimizer.param_groups
    if multipliers is None:
        values = [float(g.get(MULTIPLIER_KEY, 1.0)) for g in groups]
    else:
        values = [float(m[MULTIPLIER_KEY]) if isinstance(m, Mapping) else float(m) for m in multipliers]
        if len(values) != len(groups):
            raise ValueError(
                f"multipliers must have one entry per param group ({len(groups)}), got {len(values)}"
            )
    for i, v in enumerate(values):
        check_non_negative(f"multipliers[{i}]", v)
    return values


class ScheduledLR(LRScheduler):
    """Sets ``group["lr"] = schedule(step) * multiplier`` for every param group on each ``step()``.

    Args:
        optimizer: any torch optimizer (Opacus' ``DPOptimizer`` included).
        schedule: a pure ``step -> lr`` function (any :class:`~distsched.schedules.Schedule`).
        multipliers: one float per param group, or the param-group dicts themselves (their
            ``"lr_multiplier"`` is read, as produced by :func:`~distsched.schedules.layerwise`).
            Default: each group's ``"lr_multiplier"``, else 1.

    Unlike torch's schedulers it never warns about ``step()`` before ``optimizer.step()``: with a
    closed form, a step skipped by ``GradScaler`` changes nothing that a later step depends on.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Schedule,
        multipliers: Sequence[float] | Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        if not callable(schedule):
            raise ValueError(f"schedule must be callable step -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        self.multipliers = _resolve_multipliers(optimizer, multipliers)
        super().__init__(optimizer, last_epoch=-1)

    @property
    def step_count(self) -> int:
        """The current step t (0 right after construction)."""
        return self.last_epoch

    def _closed_form(self, step: int) -> list[float]:
        value = float(self.schedule(step))
        return [value * m for m in self.multipliers]

    def get_lr(self) -> list[float]:
        return self._closed_form(self.last_epoch)

    _get_closed_form_lr = get_lr

    def _apply(self) -> None:
        lrs = self._closed_form(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        """Advance one step (or jump to ``epoch``) and set the learning rates."""
        self._step_count += 1
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        """The step and the multipliers; the schedule itself is code, not state."""
        return {"step": self.last_epoch, "multipliers": list(self.multipliers)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        step = state_dict["step"] if "step" in state_dict else state_dict.get("last_epoch")
        if step is None:
            raise ValueError(f"state_dict must hold 'step', got keys {sorted(state_dict)}")
        self.last_epoch = int(step)
        if "multipliers" in state_dict:
            self.multipliers = [float(m) for m in state_dict["multipliers"]]
        self._apply()
