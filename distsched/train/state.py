"""One worker's resumable state: :class:`WorkerState`, with ``state_dict()`` / ``load_state_dict()``
(as :class:`~distsched.privacy.PrivateTraining` has).

Everything that must survive a restart: the worker's own model and optimizer (models differ between
syncs), the schedule step (:class:`~distsched.schedules.ScheduledLR`), the controller, the sync engine
(rounds, bytes, round in progress, rule state), DP (accountant history, guard, noise step), the data
position, RNG states and the loop's counters (step, elapsed time, the metrics window and the
``(lr, H, sigma)`` of the last step taken). ``state_dict()`` is the checkpoint one worker writes
(:mod:`distsched.train.checkpoint`: tensors and plain types); its keys are those checkpoints have always
had, so a checkpoint written before this class existed resumes.

It also holds the one rule for the applied learning rate (:meth:`WorkerState.set_lr`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distsched.train import checkpoint as ckpt
from distsched.train.resize import check_no_exchange_in_flight, world_lr_factor

if TYPE_CHECKING:
    from distsched.control import Controller
    from distsched.privacy import PrivateTraining
    from distsched.schedules import ScheduledLR
    from distsched.sync import LocalSGD
    from distsched.train.config import TrainConfig

#: the optional parts: (key, what a checkpoint without it was), present in the config iff in the checkpoint.
_OPTIONAL = (("controller", "a run without one"), ("privacy", "a run without DP"))


@dataclasses.dataclass
class WorkerState:
    """The parts of one worker that a checkpoint restores, and the loop's counters."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    #: schedule x controller (a ``ScheduledLR`` over ``Controlled(schedule, controller)``); its state is the step.
    scheduler: ScheduledLR
    engine: LocalSGD
    #: the data position: a ``ShardBatches`` or, with DP, a ``PoissonBatches``.
    sampler: Any
    privacy: PrivateTraining | None = None
    controller: Controller | None = None
    #: the launched number of workers, and the run's first (the reference of ``world_lr``).
    world_size: int = 1
    base_world: int = 1
    #: the LR rule of a resized run (:func:`~distsched.train.resize.world_lr_factor`); config, not saved.
    world_lr: str = "none"
    #: steps done, seconds spent, and whether the run finished (as of the checkpoint).
    step: int = 0
    elapsed_s: float = 0.0
    finished: bool = False
    #: (sum of loss x examples, examples) of this worker's steps since the last metrics record, and the number of
    #: those steps (the same on every worker; a step on an empty Poisson draw adds to it alone).
    window: tuple[float, int] = (0.0, 0)
    window_steps: int = 0
    #: (lr, H, sigma) of the last step taken: a stop-at-budget record needs it even when that step ran before
    #: a restart, so it travels with the loss window it belongs to.
    last_step: tuple[float | None, int | None, float | None] = (None, None, None)

    # ------------------------------------------------------------------------------------ the LR
    def lr_factor(self, step: int) -> float:
        """The multipliers applied on top of schedule x controller at ``step``:
        ``world_lr(W, W0) x engine.lr_factor(t) x dp`` (the sync engine's LR compensation; DP's noise-aware
        factor, 1 without LR coupling)."""
        dp = self.privacy.lr_factor if self.privacy is not None else 1.0
        return world_lr_factor(self.world_lr, self.world_size, self.base_world) * self.engine.lr_factor(step) * dp

    def set_lr(self, step: int) -> None:
        """The ONE place the applied LR is set, for every param group ``g``::

            lr_g(t) = schedule(t) x controller(t)  x  world_lr  x  engine.lr_factor(t)  x  dp_factor

        the first two from the scheduler (its closed form at its own step ``t``), the others from
        :meth:`lr_factor`."""
        factor = self.lr_factor(step)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr * factor

    # ------------------------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint of this worker (the RNG states captured now)."""
        return {
            "step": self.step, "world_size": self.world_size, "base_world": self.base_world,
            "finished": self.finished, "elapsed_s": self.elapsed_s, "window": self.window,
            "window_steps": self.window_steps, "last_step": self.last_step,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "engine": self.engine.state_dict(),
            "sampler": self.sampler.state_dict(), "rng": ckpt.capture_rng(),
            "privacy": self.privacy.state_dict() if self.privacy is not None else None,
            "controller": self.controller.state_dict() if self.controller is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], where: Any = "") -> None:
        """Restore from :meth:`state_dict` (or a resized one, whose ``rng`` is None: the caller reseeds).
        A checkpoint whose optional parts (controller, privacy) are not those of this state is refused
        with one ``ValueError`` before anything is loaded; ``where`` names the checkpoint in it."""
        self._check_parts(state, where)
        self.base_world = int(state.get("base_world", state["world_size"]))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.controller is not None:  # before the scheduler, whose LR reads the controller
            self.controller.load_state_dict(state["controller"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.engine.load_state_dict(state["engine"])
        if self.privacy is not None:  # the budget already spent: a resumed run cannot reset it
            self.privacy.load_state_dict(state["privacy"])
        self.sampler.load_state_dict(state["sampler"])
        if state["rng"] is not None:
            ckpt.restore_rng(state["rng"])
        self.step, self.elapsed_s = int(state["step"]), float(state["elapsed_s"])
        self.window, self.finished = tuple(state["window"]), bool(state["finished"])
        self.window_steps = int(state.get("window_steps", self.window[1]))  # before: one count per step
        self.last_step = tuple(state.get("last_step", self.last_step))

    def _check_parts(self, state: dict[str, Any], where: Any) -> None:
        _check_parts({key: getattr(self, key) is not None for key, _ in _OPTIONAL}, state, where)


def _check_parts(present: dict[str, bool], state: dict[str, Any], where: Any) -> None:
    """ValueError when the optional parts (controller, privacy) ``present`` in the run are not those of ``state``."""
    for key, without in _OPTIONAL:
        ours, saved = present[key], state.get(key) is not None
        if ours and not saved:
            raise ValueError(f"{key}: the checkpoint {where} has no {key} state ({without})")
        if saved and not ours:
            raise ValueError(f"{key}: the checkpoint {where} holds {key} state, the config has no {key} block")


def check_resumable(cfg: TrainConfig, checkpoint: Path) -> None:
    """Refuse, on the driver and before any worker starts, a resume of ``checkpoint`` (a ``step_N`` folder)
    with ``cfg`` that the workers would refuse: optional parts (controller, privacy) added or removed, a resize
    with sync exchanges in flight, or
    privacy settings that would loosen the checkpoint's guarantee (:func:`distsched.privacy.resume.check_resume`:
    budget, delta, accountant, ``reproducible``, a local-mode run in another mode or size). One ``ValueError``."""
    state = ckpt.load_rank_state(checkpoint, 0)
    _check_parts({"controller": cfg.controller is not None, "privacy": cfg.privacy is not None}, state, checkpoint)
    saved_world = int(ckpt.read_meta(checkpoint).get("world_size", 1))
    if cfg.elastic is None and cfg.workers != saved_world:  # a resize: no exchange of the old group in flight
        check_no_exchange_in_flight(state["engine"])
    if cfg.privacy is None:
        return
    from distsched.privacy.resume import check_resume
    from distsched.privacy.training import resolve_mode

    p = cfg.privacy
    check_resume(state["privacy"], target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant,
                 reproducible=p.reproducible, eps_error=p.eps_error,
                 mode=resolve_mode(p.mode, cfg.workers, cfg.sync.every_step),
                 world_size=cfg.workers, saved_world_size=saved_world)
