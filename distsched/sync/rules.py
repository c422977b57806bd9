"""Sync rules: choose the next local-SGD period H (local steps between two averagings) from the LR.

A rule is asked once per round, at the round's first step ``t``, with the learning rate of the
attached schedule at that step (``lr_t = schedule(t)``) and, for loss-driven rules, the loss
averaged over the workers. Every rule returns an integer ``H >= 1``; given ``total_steps = T`` it
never returns more than ``T - t``, so a round never runs past the last step and the last step
always syncs.

Rules hold no tensors. Stateful rules (:class:`PostLocal`, :class:`AdaComm`) keep what they learned
in ``state_dict()``, so a resumed run chooses the same periods.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from distsched._checks import check_finite, check_int, check_non_negative, check_positive

#: Largest period a rule returns when the formula diverges (lr -> 0) and no cap is given.
H_CAP = 2**31 - 1

# Tolerance for floor/ceil of a formula whose exact value is an integer (e.g. (0.2 / 0.1)^2 = 4).
_EPS = 1e-9


def _clip(h: float, step: int, h_max: int | None, total_steps: int | None) -> int:
    """``min(h, h_max, total_steps - step, H_CAP)``, and at least 1."""
    out = H_CAP if not math.isfinite(h) or h >= H_CAP else int(h)
    if h_max is not None:
        out = min(out, h_max)
    if total_steps is not None:
        out = min(out, total_steps - step)
    return max(1, out)


def _check_call(step: int, lr: float | None, total_steps: int | None) -> None:
    check_int("step", step, 0)
    if lr is not None:
        check_non_negative("lr", lr)
    if total_steps is not None:
        check_int("total_steps", total_steps, 1)


def _require_lr(rule: str, lr: float | None) -> float:
    if lr is None:
        raise ValueError(f"lr must be a number >= 0 for {rule} (attach a schedule), got None")
    return float(lr)


@dataclasses.dataclass
class SyncRule:
    """Base class: ``next_period(step, lr, loss=None, total_steps=None) -> H``.

    ``uses_lr`` / ``uses_loss`` tell the engine what the rule reads: the engine averages the loss
    across workers (inside the parameter all_reduce) only for rules that use it, so every worker
    chooses the same H.
    """

    uses_lr: ClassVar[bool] = True
    uses_loss: ClassVar[bool] = False

    def next_period(
        self, step: int, lr: float | None, loss: float | None = None, total_steps: int | None = None
    ) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What the rule learned while running (empty for pure rules)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@dataclasses.dataclass
class FixedH(SyncRule):
    """``H = h`` every round (classic local SGD / periodic model averaging)."""

    uses_lr: ClassVar[bool] = False

    h: int

    def __post_init__(self) -> None:
        check_int("h", self.h, 1)

    def next_period(
        self, step: int, lr: float | None, loss: float | None = None, total_steps: int | None = None
    ) -> int:
        _check_call(step, lr, total_steps)
        return _clip(self.h, step, None, total_steps)


@dataclasses.dataclass
class PostLocal(SyncRule):
    """Post-local SGD (Lin et al. 2020, "Don't use large mini-batches, use local SGD", ICLR):
    ``H = 1`` until ``switch_step``, then ``H = h``.

    With ``switch_step=None`` the switch happens at the first LR decay: the first round whose
    ``lr_t < (1 - decay_tol) * max(lr_0..lr_t)`` (warmup, which raises the LR, is not a decay).
    On a smooth decay such as cosine that is the first step after the peak; pass ``switch_step``
    to switch later.
    """

    h: int
    switch_step: int | None = None
    decay_tol: float = 1e-6
    _peak_lr: float | None = dataclasses.field(default=None, init=False, repr=False)
    _switched_at: int | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_int("h", self.h, 1)
        if self.switch_step is not None:
            check_int("switch_step", self.switch_step, 0)
        check_non_negative("decay_tol", self.decay_tol)
        if self.decay_tol >= 1:
            raise ValueError(f"decay_tol must be in [0, 1), got {self.decay_tol!r}")

    @property
    def uses_lr(self) -> bool:  # type: ignore[override]
        return self.switch_step is None

    @property
    def switched_at(self) -> int | None:
        """The step at which H left 1 (None while still in the H = 1 phase)."""
        return self._switched_at

    def next_period(
        self, step: int, lr: float | None, loss: float | None = None, total_steps: int | None = None
    ) -> int:
        _check_call(step, lr, total_steps)
        if self._switched_at is None:
            if self.switch_step is not None:
                if step >= self.switch_step:
                    self._switched_at = step
            else:
                lr = _require_lr("PostLocal(switch_step=None)", lr)
                if self._peak_lr is not None and lr < (1.0 - self.decay_tol) * self._peak_lr:
                    self._switched_at = step
                self._peak_lr = lr if self._peak_lr is None else max(self._peak_lr, lr)
        h = 1 if self._switched_at is None else self.h
        return _clip(h, step, None, total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"peak_lr": self._peak_lr, "switched_at": self._switched_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._peak_lr = state.get("peak_lr")
        self._switched_at = state.get("switched_at")


@dataclasses.dataclass
class QSR(SyncRule):
    """Quadratic Synchronization Rule (Gu, Lyu, Arora, Zhang, Huang 2024, "A Quadratic
    Synchronization Rule for Distributed Deep Learning", ICLR):

    ``H_t = max(h_base, floor((alpha / lr_t) ** gamma))``, then ``min(H_t, h_max, T - t)``.

    ``gamma = 2`` is the paper's rule; as the LR decays, H grows as ``1 / lr^2``. Pick ``alpha``
    with :func:`suggest_alpha` (QSR then starts to act right after the peak LR).

    Warmup: a round that starts at ``t < warmup_steps`` has ``H = h_base`` whatever the LR, as in the
    authors' implementation (github.com/hmgxr128/QSR, ``LocalOptimizer.adjust_h``); QSR applies to
    the decay after the warmup. Without it a warmup from LR 0 gives ``(alpha / 0)^2``: one round for
    the whole run. Pass the schedule's warmup length when it has one.
    """

    h_base: int
    alpha: float
    gamma: float = 2.0
    h_max: int | None = None
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        check_int("h_base", self.h_base, 1)
        check_positive("alpha", self.alpha)
        check_positive("gamma", self.gamma)
        if self.h_max is not None:
            check_int("h_max", self.h_max, self.h_base)
        check_int("warmup_steps", self.warmup_steps, 0)

    def period_from_lr(self, lr: float) -> float:
        """``max(h_base, floor((alpha / lr) ** gamma))`` before any cap (``inf`` for ``lr = 0``)."""
        if lr <= 0:
            return math.inf
        log_h = self.gamma * (math.log(self.alpha) - math.log(lr))
        if log_h > math.log(H_CAP):
            return math.inf
        return float(max(self.h_base, math.floor(math.exp(log_h) + _EPS)))

    def next_period(
        self, step: int, lr: float | None, loss: float | None = None, total_steps: int | None = None
    ) -> int:
        _check_call(step, lr, total_steps)
        lr = _require_lr("QSR", lr)
        h = self.h_base if step < self.warmup_steps else self.period_from_lr(lr)
        return _clip(h, step, self.h_max, total_steps)


@dataclasses.dataclass
class AdaComm(SyncRule):
    """AdaComm-style adaptive period (Wang & Joshi 2019, "Adaptive Communication Strategies to
    Achieve the Best Error-Runtime Trade-off in Local-Update SGD", SysML):

    ``H_t = ceil(sqrt((lr_0 / lr_t) * (F_t / F_0)) * h_0)``, then ``min(H_t, h_max, T - t)``,

    where ``lr_0`` and ``F_0`` are the LR and the (worker-averaged) loss seen first, and ``F_t`` the
    latest loss. Before any loss is seen, or when ``loss`` is None, the latest known loss is used
    (the loss factor is 1 until the first loss arrives).
    """

    uses_loss: ClassVar[bool] = True

    h_0: int
    h_max: int | None = None
    _lr_0: float | None = dataclasses.field(default=None, init=False, repr=False)
    _f_0: float | None = dataclasses.field(default=None, init=False, repr=False)
    _f_last: float | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_int("h_0", self.h_0, 1)
        if self.h_max is not None:
            check_int("h_max", self.h_max, 1)

    def next_period(
        self, step: int, lr: float | None, loss: float | None = None, total_steps: int | None = None
    ) -> int:
        _check_call(step, lr, total_steps)
        lr = _require_lr("AdaComm", lr)
        if loss is not None:
            loss = check_non_negative("loss", loss)
            if self._f_0 is None:
                if loss == 0:
                    raise ValueError("loss must be > 0 the first time AdaComm sees it (it is F_0), got 0.0")
                self._f_0 = loss
            self._f_last = loss
        if self._lr_0 is None:
            if lr == 0:
                raise ValueError("lr must be > 0 the first time AdaComm sees it (it is lr_0), got 0.0")
            self._lr_0 = lr
        loss_ratio = 1.0 if self._f_0 is None else self._f_last / self._f_0
        if lr == 0:
            h = math.inf
        else:
            h = math.ceil(math.sqrt((self._lr_0 / lr) * loss_ratio) * self.h_0 - _EPS)
        return _clip(h, step, self.h_max, total_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"lr_0": self._lr_0, "f_0": self._f_0, "f_last": self._f_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._lr_0 = state.get("lr_0")
        self._f_0 = state.get("f_0")
        self._f_last = state.get("f_last")


def suggest_alpha(lr_peak: float, h_base: int, gamma: float = 2.0) -> float:
    """Rule of thumb for QSR's ``alpha``: ``alpha = lr_peak * h_base ** (1 / gamma)``
    (``lr_peak * sqrt(h_base)`` for ``gamma = 2``).

    With it ``(alpha / lr_peak) ** gamma = h_base``: H is ``h_base`` at the peak LR and grows as soon
    as the LR decays (Gu et al. 2024, Sec. 3).
    """
    check_positive("lr_peak", lr_peak)
    check_int("h_base", h_base, 1)
    check_positive("gamma", gamma)
    return float(lr_peak) * float(h_base) ** (1.0 / float(gamma))


@dataclasses.dataclass(frozen=True)
class LRCompensation:
    """LR compensation for infrequent sync: ``lr_eff = lr_t * min(1, (h_ref / H) ** power)``.

    Longer rounds let the workers drift further apart; scaling the step size down as H grows pays
    for the saved communication with a smaller step (the local-SGD error term grows with
    ``lr^2 * H``, Stich 2019, "Local SGD converges fast and communicates little", ICLR). The
    factor is never above 1: rounds shorter than ``h_ref`` keep the scheduled LR.
    """

    h_ref: int
    power: float = 0.5

    def __post_init__(self) -> None:
        check_int("h_ref", self.h_ref, 1)
        check_finite("power", self.power)
        check_non_negative("power", self.power)

    def factor(self, h: int) -> float:
        """``min(1, (h_ref / h) ** power)``."""
        check_int("h", h, 1)
        return min(1.0, (self.h_ref / h) ** self.power)


#: name -> rule class, for configs (``sync: {rule: qsr, h_base: 4, alpha: 0.2}``).
RULES: dict[str, type[SyncRule]] = {
    "fixed": FixedH,
    "post_local": PostLocal,
    "qsr": QSR,
    "adacomm": AdaComm,
}
