"""Local SGD over any torch.distributed process group: workers step on their own and average
their models every H steps, H chosen by a sync rule from the learning rate.

One sync is one all_reduce per bucket (one bucket unless the model is larger than
``bucket_bytes``): the tensors to average (parameters, floating-point buffers, optionally the
optimizer's momentum) live in flat buffers, ``x <- (sum_k x_k) / K`` (SUM, then divide by the world
size ``K``). The tensors are re-pointed at slices of those flat buffers (as torch's
``average_parameters`` does), so a sync copies nothing; a tensor replaced behind our back (a
``.data =`` assignment, ``optimizer.load_state_dict``) is detected by its address and copied back in.

Optional DiLoCo outer step (Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training
of Language Models"): with ``x_prev`` the global model at the previous sync and ``x_avg`` the
average, the pseudo-gradient is ``g = x_prev - x_avg`` (a descent direction, like a gradient) and
the outer optimizer (Nesterov SGD in the paper) steps ``x_prev`` along it; outer SGD with lr 1 and
no momentum gives back ``x_avg``, i.e. plain averaging.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distsched._checks import check_int, check_non_negative, check_positive
from distsched.sync.rules import LRCompensation, SyncRule

OuterFactory = Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer]


@dataclasses.dataclass(frozen=True)
class OuterSGD:
    """Outer optimizer factory for DiLoCo: ``SGD(lr, momentum, nesterov)`` over the global model.

    Defaults are the paper's: lr 0.7, Nesterov momentum 0.9. Picklable, so it ships to Ray workers.
    """

    lr: float = 0.7
    momentum: float = 0.9
    nesterov: bool = True

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_non_negative("momentum", self.momentum)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def __call__(self, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        nesterov = self.nesterov and self.momentum > 0
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=nesterov)


@dataclasses.dataclass
class _Bucket:
    flat: torch.Tensor
    index: list[int]  # positions of its tensors in the collected list
    tensors: list[torch.Tensor]
    views: list[torch.Tensor]


def _world(group: Any) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without an initialized process group."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("group must be None when torch.distributed is not initialized")
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class LocalSGD:
    """Average ``model`` across the workers of ``group`` when ``rule`` says so.

    Call :meth:`step` after ``optimizer.step()`` at every (0-based) step ``t``. Round ``r`` starts at
    step ``s_r`` (``s_0 = 0``); the rule picks ``H_r`` from ``schedule(s_r)``, and the workers average
    after step ``min(s_r + H_r, total_steps) - 1``; the next round starts right after. The last step
    (``total_steps - 1``) always syncs; without ``total_steps``, :meth:`finalize` guarantees the final
    sync.

    Args:
        model: the worker's model; its parameters (and floating-point buffers) are averaged.
        rule: a :class:`~distsched.sync.SyncRule` (FixedH, PostLocal, QSR, AdaComm, ...).
        schedule: ``step -> lr``; required by rules that read the LR.
        group: a torch.distributed process group; None = the default group (or no group at all:
            world size 1, no communication).
        optimizer: the inner optimizer; needed for ``average_momentum``.
        average_buffers: also average floating-point buffers (BatchNorm statistics).
        average_momentum: also average the optimizer's per-parameter state tensors (SGD momentum,
            Adam moments).
        outer_optimizer: DiLoCo outer optimizer factory ``params -> Optimizer`` (e.g.
            :class:`OuterSGD`); None = plain averaging.
        lr_compensation: :class:`~distsched.sync.LRCompensation` or ``(h_ref, power)``; see
            :meth:`lr_factor`.
        total_steps: number of steps of the run; rounds never run past it.
        bucket_bytes: largest flat buffer per all_reduce (a larger single tensor gets its own).
        broadcast_init: copy rank 0's parameters and buffers to every worker at construction.

    Counters: ``rounds`` (syncs done), ``bytes_sent`` (bytes each worker hands to all_reduce:
    ``rounds * element_size * n_averaged``, plus two loss slots for loss-driven rules; 0 at world
    size 1). The initial broadcast is not counted.
    """

    def __init__(
        self,
        model: nn.Module,
        rule: SyncRule,
        schedule: Callable[[int], float] | None = None,
        group: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        average_buffers: bool = True,
        average_momentum: bool = False,
        outer_optimizer: OuterFactory | None = None,
        lr_compensation: LRCompensation | tuple[int, float] | None = None,
        total_steps: int | None = None,
        bucket_bytes: int = 25 * 2**20,
        broadcast_init: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(getattr(rule, "next_period", None)):
            raise ValueError(f"rule must have next_period(step, lr, loss, total_steps), got {type(rule).__name__}")
        if getattr(rule, "uses_lr", True) and schedule is None:
            raise ValueError(f"schedule must be given for rule {type(rule).__name__}, which reads the LR; got None")
        if schedule is not None and not callable(schedule):
            raise ValueError(f"schedule must be callable step -> lr, got {type(schedule).__name__}")
        if average_momentum and optimizer is None:
            raise ValueError("optimizer must be given when average_momentum=True, got None")
        if total_steps is not None:
            total_steps = check_int("total_steps", total_steps, 1)
        check_int("bucket_bytes", bucket_bytes, 1)
        if isinstance(lr_compensation, tuple):
            lr_compensation = LRCompensation(*lr_compensation)
        if lr_compensation is not None and not isinstance(lr_compensation, LRCompensation):
            raise ValueError(f"lr_compensation must be LRCompensation, (h_ref, power) or None, got {lr_compensation!r}")

        self.model = model
        self.rule = rule
        self.schedule = schedule
        self.group = group
        self.optimizer = optimizer
        self.average_buffers = bool(average_buffers)
        self.average_momentum = bool(average_momentum)
        self.lr_compensation = lr_compensation
        self.total_steps = total_steps
        self.bucket_bytes = int(bucket_bytes)
        self.rank, self.world_size = _world(group)

        self.rounds = 0
        self.bytes_sent = 0
        self.round_start = 0
        self.current_period = 1
        self.last_loss: float | None = None
        self._natural_period = 1
        self._next_sync = 1
        self._loss_sum = 0.0
        self._loss_count = 0
        self._dirty = False  # local steps since the last sync
        self._buckets: list[_Bucket] = []
        self._signature: list[tuple] = []
        self._loss_bucket: int | None = None

        self._build(self._collect())
        if broadcast_init and self.world_size > 1:
            for b in self._buckets:
                dist.broadcast(b.flat, src=self._global_rank0(), group=self.group)

        self._anchors: list[torch.Tensor] = []
        self.outer: torch.optim.Optimizer | None = None
        if outer_optimizer is not None:
            if not callable(outer_optimizer):
                raise ValueError(f"outer_optimizer must be callable params -> Optimizer, got {outer_optimizer!r}")
            self._anchors = [p.detach().clone() for p in self._outer_params()]
            self.outer = outer_optimizer(self._anchors)
            if not isinstance(self.outer, torch.optim.Optimizer):
                raise ValueError(f"outer_optimizer must return a torch Optimizer, got {type(self.outer).__name__}")
        self._start_round(0)

    # ------------------------------------------------------------------ public API
    @property
    def next_sync_step(self) -> int:
        """The step after which the current round syncs (``round_start + current_period - 1``)."""
        return self._next_sync - 1

    def step(self, step: int, loss: float | torch.Tensor | None = None) -> bool:
        """Record that step ``step`` was taken (after ``optimizer.step()``); average when due.

        ``loss`` (this worker's loss at the step) feeds loss-driven rules. Returns True if it synced.
        """
        step = check_int("step", step, 0)
        if loss is not None and getattr(self.rule, "uses_loss", False):
            self._loss_sum += float(loss.detach()) if torch.is_tensor(loss) else float(loss)
            self._loss_count += 1
        self._dirty = True
        if step + 1 >= self._next_sync:
            self.sync()
            self._start_round(step + 1)
            return True
        return False

    def sync(self) -> None:
        """Average now (all_reduce SUM, divide by the world size), then the outer step if any."""
        tensors = self._collect()
        if self._changed(tensors):
            self._build(tensors)
        else:
            self._repoint(tensors)
        uses_loss = getattr(self.rule, "uses_loss", False)
        if uses_loss:
            slot = self._buckets[self._loss_bucket].flat
            has = 1.0 if self._loss_count else 0.0
            slot[-2] = self._loss_sum / self._loss_count if self._loss_count else 0.0
            slot[-1] = has
        if self.world_size > 1:
            for b in self._buckets:
                dist.all_reduce(b.flat, op=dist.ReduceOp.SUM, group=self.group)
                b.flat.div_(self.world_size)
                self.bytes_sent += b.flat.numel() * b.flat.element_size()
        if uses_loss:
            slot = self._buckets[self._loss_bucket].flat
            self.last_loss = float(slot[-2] / slot[-1]) if float(slot[-1]) > 0 else self.last_loss
        if self.outer is not None:
            self._outer_step()
        self.rounds += 1
        self._loss_sum, self._loss_count = 0.0, 0
        self._dirty = False

    def finalize(self) -> bool:
        """Sync if any step was taken since the last sync (idempotent). Returns True if it synced."""
        if not self._dirty:
            return False
        self.sync()
        return True

    def lr_factor(self, step: int) -> float:
        """LR compensation factor for the round containing ``step``: ``min(1, (h_ref / H) ** p)``
        with H the rule's period for the round (before the cut at ``total_steps``); 1.0 if off.

        The engine never touches the optimizer's LR; the loop sets ``lr = schedule(t) * lr_factor(t)``.
        """
        check_int("step", step, 0)
        if self.lr_compensation is None:
            return 1.0
        return self.lr_compensation.factor(self._natural_period)

    @property
    def num_buckets(self) -> int:
        """Flat buffers, i.e. all_reduce calls per sync."""
        return len(self._buckets)

    @property
    def numel_averaged(self) -> int:
        """Elements averaged per sync (loss slots included)."""
        return sum(b.flat.numel() for b in self._buckets)

    def state_dict(self) -> dict[str, Any]:
        """Counters, the round in progress, the rule's state and the outer optimizer (DiLoCo)."""
        return {
            "rounds": self.rounds,
            "bytes_sent": self.bytes_sent,
            "round_start": self.round_start,
            "current_period": self.current_period,
            "natural_period": self._natural_period,
            "next_sync": self._next_sync,
            "last_loss": self.last_loss,
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
            "dirty": self._dirty,
            "rule": self.rule.state_dict(),
            "anchors": [a.detach().clone() for a in self._anchors],
            "outer": self.outer.state_dict() if self.outer is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model and inner optimizer are restored by their owners)."""
        self.rounds = int(state["rounds"])
        self.bytes_sent = int(state["bytes_sent"])
        self.round_start = int(state["round_start"])
        self.current_period = int(state["current_period"])
        self._natural_period = int(state["natural_period"])
        self._next_sync = int(state["next_sync"])
        self.last_loss = state["last_loss"]
        self._loss_sum = float(state["loss_sum"])
        self._loss_count = int(state["loss_count"])
        self._dirty = bool(state["dirty"])
        self.rule.load_state_dict(state["rule"])
        if self.outer is not None:
            if not state.get("anchors") or state.get("outer") is None:
                raise ValueError("state has no outer-optimizer state, but this engine has an outer_optimizer")
            with torch.no_grad():
                for a, saved in zip(self._anchors, state["anchors"]):
                    a.copy_(saved)
            self.outer.load_state_dict(state["outer"])

    def __repr__(self) -> str:
        return (
            f"LocalSGD(rule={self.rule!r}, world_size={self.world_size}, rounds={self.rounds}, "
            f"bytes_sent={self.bytes_sent}, current_period={self.current_period})"
        )

    # ------------------------------------------------------------------ internals
    def _global_rank0(self) -> int:
        if self.group is None:
            return 0
        return dist.get_global_rank(self.group, 0)

    def _lr_at(self, step: int) -> float | None:
        return None if self.schedule is None else float(self.schedule(step))

    def _start_round(self, step: int) -> None:
        self.round_start = step
        if self.total_steps is not None and step >= self.total_steps:
            # past the end of the run (a loop that keeps going): sync after every step
            self._next_sync = step + 1
            return
        natural = int(self.rule.next_period(step, self._lr_at(step), self.last_loss, None))
        period = natural if self.total_steps is None else min(natural, self.total_steps - step)
        self._natural_period = natural
        self.current_period = max(1, period)
        self._next_sync = step + self.current_period

    def _collect(self) -> list[torch.Tensor]:
        """The tensors to average, in a fixed order: parameters, buffers, momentum."""
        params = list(self.model.parameters())
        out = [p for p in params if p.is_floating_point() and p.numel() > 0]
        if self.average_buffers:
            out += [b for b in self.model.buffers() if b.is_floating_point() and b.numel() > 0]
        if self.average_momentum:
            for p in params:
                st = self.optimizer.state.get(p, {})
                for key in sorted(st):
                    v = st[key]
                    if torch.is_tensor(v) and v.is_floating_point() and v.shape == p.shape and v.numel() > 0:
                        out.append(v)
        return out

    def _changed(self, tensors: list[torch.Tensor]) -> bool:
        sig = [(t.shape, t.dtype, t.device) for t in tensors]
        return sig != self._signature

    def _build(self, tensors: list[torch.Tensor]) -> None:
        """Lay ``tensors`` out in flat buffers (per device and dtype, up to bucket_bytes each) and
        re-point each tensor at its slice."""
        self._signature = [(t.shape, t.dtype, t.device) for t in tensors]
        plan: list[tuple[tuple, list[int]]] = []
        open_bucket: dict[tuple, int] = {}
        sizes: list[int] = []
        for idx, t in enumerate(tensors):
            key = (t.device, t.dtype)
            nbytes = t.numel() * t.element_size()
            i = open_bucket.get(key)
            if i is None or (sizes[i] > 0 and sizes[i] + nbytes > self.bucket_bytes):
                plan.append((key, []))
                sizes.append(0)
                i = open_bucket[key] = len(plan) - 1
            plan[i][1].append(idx)
            sizes[i] += nbytes
        uses_loss = getattr(self.rule, "uses_loss", False)
        if uses_loss and not plan:
            plan.append(((torch.device("cpu"), torch.float32), []))
        self._loss_bucket = len(plan) - 1 if uses_loss else None
        self._buckets = []
        with torch.no_grad():
            for j, ((device, dtype), index) in enumerate(plan):
                ts = [tensors[i] for i in index]
                n = sum(t.numel() for t in ts) + (2 if j == self._loss_bucket else 0)
                flat = torch.zeros(n, device=device, dtype=dtype)
                views, off = [], 0
                for t in ts:
                    v = flat[off : off + t.numel()].view(t.shape)
                    v.copy_(t)
                    t.data = v
                    views.append(v)
                    off += t.numel()
                self._buckets.append(_Bucket(flat=flat, index=list(index), tensors=ts, views=views))

    def _repoint(self, tensors: list[torch.Tensor]) -> None:
        """Copy back any tensor that no longer lives in its flat slice (replaced since the build)."""
        with torch.no_grad():
            for b in self._buckets:
                for k, v in enumerate(b.views):
                    t = tensors[b.index[k]]
                    if t.data_ptr() != v.data_ptr() or t is not b.tensors[k] or t.stride() != v.stride():
                        v.copy_(t)
                        t.data = v
                        b.tensors[k] = t

    def _outer_params(self) -> list[torch.Tensor]:
        """The parameters the outer optimizer moves: the averaged ones (floating point, non-empty)."""
        return [p for p in self.model.parameters() if p.is_floating_point() and p.numel() > 0]

    def _outer_step(self) -> None:
        """DiLoCo: ``g = x_prev - x_avg``; outer optimizer step on ``x_prev``; model <- ``x_prev``."""
        params = self._outer_params()
        if [p.shape for p in params] != [a.shape for a in self._anchors]:
            raise ValueError(
                "outer_optimizer: the model's parameters changed after the engine was built "
                f"({len(self._anchors)} anchors, {len(params)} parameters now); build a new LocalSGD"
            )
        with torch.no_grad():
            for a, p in zip(self._anchors, params):
                a.grad = a - p.detach()
        self.outer.step()
        self.outer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for a, p in zip(self._anchors, params):
                p.copy_(a)

