"""PyTorch adapter: apply a schedule to any torch optimizer, keeping each param group's own LR.

The learning rate is computed in closed form, ``lr_g(t) = schedule(t) * m_g``, from the step count
alone (never the recursive ``lr_t = f(lr_{t-1})`` form), so the adapter's whole state is the step
(and the factors ``m_g``) and a run resumed from ``state_dict`` at any step yields the identical
sequence. As with torch's schedulers, ``m_g = base_g / peak`` by default: each group's initial LR is
its base and the schedule gives the shape; layer-wise multipliers replace that with ``m_g`` given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from distsched._checks import check_non_negative, check_positive
from distsched.schedules.base import Schedule
from distsched.schedules.peak import peak_lr

MULTIPLIER_KEY = "lr_multiplier"


def _resolve_multipliers(
    optimizer: Optimizer,
    schedule: Schedule,
    multipliers: Sequence[float] | Sequence[Mapping[str, Any]] | None,
    peak: float | None,
) -> list[float]:
    groups = optimizer.param_groups
    if multipliers is None and not any(MULTIPLIER_KEY in g for g in groups):
        # torch's convention: the group's initial LR is its base, the schedule only gives the shape
        top = check_positive("peak", peak) if peak is not None else peak_lr(schedule)
        if not top > 0:
            raise ValueError(f"the schedule's peak lr must be > 0 to scale the groups' LRs, got {top!r}")
        values = []
        for i, g in enumerate(groups):
            base = float(g.get("initial_lr", g["lr"]))
            if not base > 0:
                raise ValueError(
                    f"param group {i} has lr {base!r}: ScheduledLR scales each group's initial lr by "
                    f"schedule(t) / peak; give the optimizer the peak lr ({top:g}), or pass "
                    f"multipliers=[1.0, ...] to let the schedule set the lr itself"
                )
            values.append(base / top)
        return values
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
    """Sets ``group["lr"] = lr_g(t)`` for every param group g on each ``step()``, in closed form.

    The rule, as torch's own schedulers (``CosineAnnealingLR``, ``LambdaLR``...) and HF's
    ``get_cosine_schedule_with_warmup``:

    * default: ``lr_g(t) = base_g * schedule(t) / peak``, where ``base_g`` is the group's initial LR
      (``group["initial_lr"]`` if a scheduler already set it, else ``group["lr"]``) and ``peak`` is
      :func:`~distsched.schedules.peak_lr` of the schedule (its ``lr`` parameter). Groups at 1e-4 and
      1e-2 keep their 100x ratio; with one group whose LR is the schedule's ``lr``, ``lr(t) =
      schedule(t)``. ``min_lr`` scales with each group too (torch's ``eta_min`` is one absolute floor).
    * layer-wise: ``lr_g(t) = schedule(t) * m_g`` when ``multipliers`` are passed or the groups carry
      ``"lr_multiplier"`` (as :func:`~distsched.schedules.layerwise` makes them); the schedule then
      sets the LR itself and the groups' own ``lr`` is ignored (``multipliers=[1.0]`` for one group).

    Args:
        optimizer: any torch optimizer (Opacus' ``DPOptimizer`` included).
        schedule: a pure ``step -> lr`` function (any :class:`~distsched.schedules.Schedule`).
        multipliers: one float per param group, or the param-group dicts themselves (their
            ``"lr_multiplier"`` is read).
        peak: the value ``schedule(t)`` is divided by in the default rule (default: ``peak_lr``);
            needed for a plain function, which has no ``lr`` parameter.

    Unlike torch's schedulers it never warns about ``step()`` before ``optimizer.step()``: with a
    closed form, a step skipped by ``GradScaler`` changes nothing that a later step depends on.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Schedule,
        multipliers: Sequence[float] | Sequence[Mapping[str, Any]] | None = None,
        peak: float | None = None,
    ) -> None:
        if not callable(schedule):
            raise ValueError(f"schedule must be callable step -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        #: the factors m_g of ``lr_g(t) = schedule(t) * m_g`` (``base_g / peak`` by default)
        self.multipliers = _resolve_multipliers(optimizer, schedule, multipliers, peak)
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
        """The step and the factors ``m_g``; the schedule itself is code, not state."""
        return {"step": self.last_epoch, "multipliers": list(self.multipliers)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        step = state_dict["step"] if "step" in state_dict else state_dict.get("last_epoch")
        if step is None:
            raise ValueError(f"state_dict must hold 'step', got keys {sorted(state_dict)}")
        self.last_epoch = int(step)
        if "multipliers" in state_dict:
            self.multipliers = [float(m) for m in state_dict["multipliers"]]
        self._apply()
