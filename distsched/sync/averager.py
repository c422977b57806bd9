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
no momentum gives back ``x_avg``, i.e. plain averaging. Its LR and momentum may follow a schedule of
the outer round (:class:`OuterSGD`).

Communication-efficient options (Douillard et al. 2025, "Streaming DiLoCo with overlapping
communication"; torchft's ``DiLoCo``):

- ``fragments=F``: the model is cut into F groups of modules balanced by size
  (:mod:`distsched.sync.fragments`); fragment ``f`` first syncs after step
  ``ceil((f + 1) H_0 / F) - 1`` and then every ``H_f`` steps, ``H_f`` asked from the rule at the
  fragment's own round start. Each fragment has its own outer optimizer. ``F = 1`` is the plain engine.
- ``compression``: each worker sends its delta ``d = x - x_anchor`` (``x_anchor``: the fragment's
  global value after its last sync, identical on all workers) as bf16/fp16 or block-scaled int8, with
  error feedback (:mod:`distsched.sync.compression`); the payloads are gathered and summed in full
  precision, and ``x_avg = x_anchor + (sum_k d_hat_k) / K``. In plain averaging mode that is the
  average of the parameters; in DiLoCo mode ``-(sum_k d_hat_k) / K`` is the pseudo-gradient. Deltas,
  not parameters, are compressed in both modes: they are small and centred, parameters are not.
- ``delay=tau``: a fragment's exchange starts with ``async_op=True`` at its sync step ``t`` and is
  applied after step ``t + tau`` (never later than its next sync step, and at once on the run's last
  step), as Streaming DiLoCo's ``fragment_sync_delay``: the fragment then becomes
  ``mix * x_local + (1 - mix) * x_global`` (``mix = 0``: the tau local steps on that fragment are
  replaced by the global value, torchft's default ``fragment_update_alpha = 0``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distsched._checks import check_int, check_non_negative, check_positive, check_range
from distsched.sync.compression import Codec, GatherSum, LRCompression, compress_with_feedback, make_codec
from distsched.sync.fragments import assign_fragments
from distsched.sync.rules import LRCompensation, SyncRule

OuterFactory = Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer]


def _value_or_schedule(name: str, value: Any) -> float | Callable[[int], float]:
    """A number, a ``round -> value`` callable, or a schedule spec mapping (``{name: cosine, ...}``)."""
    if isinstance(value, Mapping):
        from distsched.schedules import from_spec

        return from_spec(value, _where=name)
    if callable(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, a schedule or a schedule spec, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class OuterSGD:
    """Outer optimizer factory for DiLoCo: ``SGD(lr, momentum, nesterov)`` over the global model.

    Defaults are the paper's: lr 0.7, Nesterov momentum 0.9. ``lr`` and ``momentum`` may each be a
    schedule of the outer round ``r`` (0 for a fragment's first outer step): a ``round -> value``
    callable or a :func:`distsched.schedules.from_spec` mapping; :class:`LocalSGD` sets
    ``lr(r)``, ``momentum(r)`` before each outer step. Picklable, so it ships to Ray workers.
    """

    lr: Any = 0.7
    momentum: Any = 0.9
    nesterov: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _value_or_schedule("lr", self.lr))
        object.__setattr__(self, "momentum", _value_or_schedule("momentum", self.momentum))
        if not callable(self.lr):
            check_positive("lr", self.lr)
        if not callable(self.momentum):
            self._check_momentum(self.momentum)

    @staticmethod
    def _check_momentum(m: float) -> float:
        check_non_negative("momentum", m)
        if m >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {m!r}")
        return m

    @property
    def scheduled(self) -> bool:
        """True when the LR or the momentum follows a schedule of the round."""
        return callable(self.lr) or callable(self.momentum)

    def at(self, round_index: int) -> tuple[float, float]:
        """``(lr, momentum)`` for outer round ``round_index``."""
        check_int("round", round_index, 0)
        lr = float(self.lr(round_index)) if callable(self.lr) else self.lr
        m = float(self.momentum(round_index)) if callable(self.momentum) else self.momentum
        check_non_negative("outer lr", lr)
        return lr, self._check_momentum(m)

    def __call__(self, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        lr, m = self.at(0)
        nesterov = self.nesterov and (m > 0 or callable(self.momentum))
        # torch refuses Nesterov without momentum at construction; a scheduled momentum is set per step
        return torch.optim.SGD(params, lr=lr, momentum=m if m > 0 or not nesterov else 0.5, nesterov=nesterov)


@dataclasses.dataclass
class _Bucket:
    flat: torch.Tensor
    index: list[int]  # positions of its tensors in the collected list
    tensors: list[torch.Tensor]
    views: list[torch.Tensor]
    anchor: torch.Tensor | None = None  # compressed mode: the global value after the last sync
    residual: torch.Tensor | None = None  # compressed mode with error feedback


class _ReduceSum:
    """An in-flight full-precision all_reduce SUM of a copy of a bucket."""

    def __init__(self, flat: torch.Tensor, group: Any) -> None:
        self.buf = flat.detach().clone()
        self.work = dist.all_reduce(self.buf, op=dist.ReduceOp.SUM, group=group, async_op=True)
        self.bytes = self.buf.numel() * self.buf.element_size()

    def wait(self) -> torch.Tensor:
        self.work.wait()
        return self.buf


class _Done:
    """A finished exchange (restored from a checkpoint)."""

    def __init__(self, total: torch.Tensor) -> None:
        self.total = total

    def wait(self) -> torch.Tensor:
        return self.total


@dataclasses.dataclass
class _Pending:
    exchanges: list[Any]
    apply_at: int = 0


_NO_GROUP_HINT = (
    "call torch.distributed.init_process_group (or distsched.sync.init_process_group) before "
    "building LocalSGD"
)


def _world(group: Any) -> tuple[int, int]:
    """(rank, world size) in ``group``; (0, 1) without an initialized process group.

    Without a group, a launcher that declares several workers (``WORLD_SIZE > 1``, as torchrun and
    Ray Train set it) is refused, as torch's ``PeriodicModelAverager`` refuses a missing default
    group: the workers would count rounds, send nothing and drift apart. A single process without a
    group (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) stays allowed: world size 1, no communication.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("group must be None when torch.distributed is not initialized")
        declared = os.environ.get("WORLD_SIZE", "1").strip() or "1"
        if declared != "1":
            raise ValueError(
                f"torch.distributed is not initialized but WORLD_SIZE={declared}: {_NO_GROUP_HINT}"
            )
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def _checked_args(model: Any, rule: Any, schedule: Any, optimizer: Any, average_momentum: bool,
                  lr_compensation: LRCompensation | tuple[int, float] | None, total_steps: int | None,
                  bucket_bytes: int, outer_optimizer: Any) -> tuple[LRCompensation | None, int | None]:
    """:class:`LocalSGD`'s arguments checked (one ``ValueError`` naming the argument); returns
    ``(lr_compensation, total_steps)`` normalized."""
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
    if outer_optimizer is not None and not callable(outer_optimizer):
        raise ValueError(f"outer_optimizer must be callable params -> Optimizer, got {outer_optimizer!r}")
    return lr_compensation, total_steps


class LocalSGD:
    """Average ``model`` across the workers of ``group`` when ``rule`` says so.

    Call :meth:`step` after ``optimizer.step()`` at every (0-based) step ``t``, in increasing order.
    Round ``r`` starts at step ``s_r`` (``s_0 = 0``); the rule picks ``H_r`` from ``schedule(s_r)``,
    and the workers average after step ``min(s_r + H_r, total_steps) - 1``; the next round starts
    right after. The last step (``total_steps - 1``) always syncs every fragment; without
    ``total_steps``, :meth:`finalize` guarantees the final sync.

    Args:
        model: the worker's model; its parameters (and floating-point buffers) are averaged.
        rule: a :class:`~distsched.sync.SyncRule` (FixedH, PostLocal, QSR, AdaComm, ...).
        schedule: ``step -> lr``; required by rules that read the LR.
        group: a torch.distributed process group; None = the default group. Without an initialized
            process group the engine runs at world size 1 (no communication), unless the environment
            declares ``WORLD_SIZE > 1`` (then it raises: build it after ``init_process_group``).
        optimizer: the inner optimizer; needed for ``average_momentum``.
        average_buffers: also average floating-point buffers (BatchNorm statistics).
        average_momentum: also average the optimizer's per-parameter state tensors (SGD momentum,
            Adam moments).
        outer_optimizer: DiLoCo outer optimizer factory ``params -> Optimizer`` (e.g.
            :class:`OuterSGD`), called once per fragment; None = plain averaging.
        lr_compensation: :class:`~distsched.sync.LRCompensation` or ``(h_ref, power)``; see
            :meth:`lr_factor`.
        total_steps: number of steps of the run; rounds never run past it.
        bucket_bytes: largest flat buffer per all_reduce (a larger single tensor gets its own).
        broadcast_init: copy rank 0's parameters and buffers to every worker at construction.
        fragments: F, the number of streaming fragments (1 = the whole model at once).
        compression: ``None``/``"none"`` (full precision), ``"bf16"``, ``"fp16"``, ``"int8"``, a
            :class:`~distsched.sync.compression.Codec`, or an
            :class:`~distsched.sync.compression.LRCompression` (the codec chosen from the LR at each
            sync step); applied to the deltas since the last sync.
        error_feedback: carry what compression lost to the next round (compressed modes only).
        delay: tau, local steps between the start of a fragment's exchange and its application.
        mix: with ``delay``, the weight of the local value when the global one arrives.

    Counters: ``rounds`` (syncs of the last fragment, i.e. whole-model syncs when F = 1),
    ``fragment_syncs``, ``bytes_sent`` (bytes each worker hands to the collectives: with full
    precision ``element_size * n_averaged`` per sync, plus two loss slots for loss-driven rules; with
    compression the payload of :mod:`~distsched.sync.compression`; 0 at world size 1) and
    ``peak_step_bytes`` (the most bytes sent at one step). The initial broadcast is not counted.
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
        fragments: int = 1,
        compression: str | Codec | None = None,
        error_feedback: bool = True,
        delay: int = 0,
        mix: float = 0.0,
    ) -> None:
        lr_compensation, total_steps = _checked_args(model, rule, schedule, optimizer, average_momentum,
                                                     lr_compensation, total_steps, bucket_bytes, outer_optimizer)
        self.fragments = check_int("fragments", fragments, 1)
        self.codec = compression if isinstance(compression, LRCompression) else make_codec(compression)
        if isinstance(self.codec, LRCompression) and schedule is None:
            raise ValueError("schedule must be given for compression=LRCompression(...), which reads the LR; got None")
        self.error_feedback = bool(error_feedback)
        self.delay = check_int("delay", delay, 0)
        self.mix = float(check_range("mix", mix, 0.0, 1.0, high_open=True))

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
        self._grouped = dist.is_available() and dist.is_initialized()
        # full precision, blocking: the flat buffers are all_reduced in place (the plain engine)
        self._inplace = self.world_size == 1 or (self.codec is None and self.delay == 0)

        self._frag_of = assign_fragments(model, self.fragments)
        if self.fragments > 1 and len(set(self._frag_of.values())) < self.fragments:
            raise ValueError(f"fragments must be <= the number of modules with parameters, got {self.fragments}")
        self._init_counters()
        self._init_buffers(broadcast_init)
        self._init_outer(outer_optimizer)
        self._start(0)

    def _init_counters(self) -> None:
        """Counters, the round in progress and the per-fragment bookkeeping, as before any step."""
        F = self.fragments
        self.rounds = 0
        self.fragment_syncs = 0
        self.bytes_sent = 0
        self.peak_step_bytes = 0
        self.round_start = 0
        self.current_period = 1
        self.last_loss: float | None = None
        self._natural_period = 1
        self._last_step: int | None = None
        self.synced_fragments: list[int] = []  # fragments whose sync started at the last step
        self.last_codec: Codec | None = None  # the codec of the latest compressed exchange
        self._step_bytes = (-1, 0)  # (step, bytes sent at it)
        self._next = [1] * F  # fragment f syncs after step _next[f] - 1
        self._loss_sum = [0.0] * F
        self._loss_count = [0] * F
        self._dirty = [False] * F  # local steps since the fragment's last sync
        self._pending: list[_Pending | None] = [None] * F
        self._outer_rounds = [0] * F
        self._buckets: list[list[_Bucket]] = [[] for _ in range(F)]
        self._signature: list[list[tuple]] = [[] for _ in range(F)]
        self._loss_bucket: list[int | None] = [None] * F

    def _init_buffers(self, broadcast_init: bool) -> None:
        """The flat buffers of every fragment; rank 0's values broadcast (``broadcast_init``); the
        compressed modes' anchors."""
        for f in range(self.fragments):
            self._build(f, self._collect(f))
        if broadcast_init and self.world_size > 1:
            for f in range(self.fragments):
                for b in self._buckets[f]:
                    dist.broadcast(b.flat, src=self._global_rank0(), group=self.group)
        if not self._inplace and self.codec is not None:
            self._init_anchors(averaged=not broadcast_init)

    def _init_outer(self, outer_optimizer: OuterFactory | None) -> None:
        """DiLoCo: per fragment, the global model's copy and its outer optimizer (none: plain averaging)."""
        self._anchors: list[list[torch.Tensor]] = [[] for _ in range(self.fragments)]
        self.outer_optimizers: list[torch.optim.Optimizer] = []
        self._outer_factory = outer_optimizer
        if outer_optimizer is None:
            return
        for f in range(self.fragments):
            self._anchors[f] = [p.detach().clone() for p in self._outer_params(f)]
            opt = outer_optimizer(self._anchors[f])
            if not isinstance(opt, torch.optim.Optimizer):
                raise ValueError(f"outer_optimizer must return a torch Optimizer, got {type(opt).__name__}")
            self.outer_optimizers.append(opt)

    # ------------------------------------------------------------------ public API
    @property
    def outer(self) -> torch.optim.Optimizer | None:
        """The outer optimizer (fragment 0's when F > 1); None in plain averaging mode."""
        return self.outer_optimizers[0] if self.outer_optimizers else None

    @property
    def next_sync_step(self) -> int:
        """The next step after which some fragment syncs."""
        return min(self._next) - 1

    @property
    def fragment_periods(self) -> list[int]:
        """The current period of each fragment's round."""
        return list(self._period)

    def step(self, step: int, loss: float | torch.Tensor | None = None) -> bool:
        """Record that step ``step`` was taken (after ``optimizer.step()``); average when due.

        Steps must increase (a repeated or earlier step raises ValueError). ``loss`` (this worker's
        loss at the step) feeds loss-driven rules. Returns True if some fragment started a sync.
        """
        step = check_int("step", step, 0)
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(
                f"step must increase: got {step} after {self._last_step} (call step(t) once per step, in order)"
            )
        self._check_group()
        self._last_step = step
        if loss is not None and getattr(self.rule, "uses_loss", False):
            value = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
            for f in range(self.fragments):
                self._loss_sum[f] += value
                self._loss_count[f] += 1
        self._dirty = [True] * self.fragments
        for f in range(self.fragments):
            pending = self._pending[f]
            if pending is not None and pending.apply_at <= step:
                self._finish(f)
        self.synced_fragments = [f for f in range(self.fragments) if step + 1 >= self._next[f]]
        for f in self.synced_fragments:
            self._sync_fragment(f, step)
        return bool(self.synced_fragments)

    def sync(self) -> None:
        """Average every fragment now, blocking (pending exchanges are applied first)."""
        self._check_group()
        self.drain()
        for f in range(self.fragments):
            self._exchange(f)
            if self._pending[f] is not None:
                self._finish(f)

    def drain(self) -> bool:
        """Wait for and apply every exchange still in flight. Returns True if there was one."""
        done = False
        for f in range(self.fragments):
            if self._pending[f] is not None:
                self._finish(f)
                done = True
        return done

    def finalize(self) -> bool:
        """Apply what is in flight, then sync if any step was taken since the last sync
        (idempotent). Returns True if it synced or applied anything."""
        drained = self.drain()
        if not any(self._dirty):
            return drained
        self.sync()
        return True

    def lr_factor(self, step: int) -> float:
        """LR compensation factor for the round containing ``step``: ``min(1, (h_ref / H) ** p)``
        with H the rule's period for the round (before the cut at ``total_steps``; with fragments, the
        latest fragment round); 1.0 if off.

        The engine never touches the optimizer's LR; the loop sets ``lr = schedule(t) * lr_factor(t)``.
        """
        check_int("step", step, 0)
        if self.lr_compensation is None:
            return 1.0
        return self.lr_compensation.factor(self._natural_period)

    @property
    def num_buckets(self) -> int:
        """Flat buffers, i.e. collective calls per full sync (every fragment once)."""
        return sum(len(bs) for bs in self._buckets)

    @property
    def numel_averaged(self) -> int:
        """Elements averaged per full sync (loss slots included)."""
        return sum(b.flat.numel() for bs in self._buckets for b in bs)

    def state_dict(self) -> dict[str, Any]:
        """Counters, each fragment's round in progress, the rule's state, the outer optimizers,
        compression anchors and residuals, and exchanges in flight (waited for and carried: a resumed
        run applies them at the same step)."""
        for f in range(self.fragments):
            self._refresh(f)
        pending = []
        for p in self._pending:
            if p is None:
                pending.append(None)
                continue
            totals = [e.wait().detach().clone() for e in p.exchanges]
            p.exchanges = [_Done(t) for t in totals]
            pending.append({"apply_at": p.apply_at, "totals": totals})
        return {
            "rounds": self.rounds,
            "bytes_sent": self.bytes_sent,
            "round_start": self.round_start,
            "current_period": self.current_period,
            "natural_period": self._natural_period,
            "next_sync": self._next[0],
            "last_loss": self.last_loss,
            "loss_sum": self._loss_sum[0],
            "loss_count": self._loss_count[0],
            "dirty": self._dirty[0],
            "rule": self.rule.state_dict(),
            "anchors": [a.detach().clone() for fa in self._anchors for a in fa],
            "outer": (self.outer_optimizers[0].state_dict() if self.fragments == 1 else
                      [o.state_dict() for o in self.outer_optimizers]) if self.outer_optimizers else None,
            "fragments": self.fragments,
            "fragment_state": {
                "next": list(self._next), "period": list(self._period), "loss_sum": list(self._loss_sum),
                "loss_count": list(self._loss_count), "dirty": list(self._dirty),
                "outer_rounds": list(self._outer_rounds),
            },
            "fragment_syncs": self.fragment_syncs,
            "peak_step_bytes": self.peak_step_bytes,
            "step_bytes": list(self._step_bytes),
            "last_step": self._last_step,
            "compression": [[{"anchor": None if b.anchor is None else b.anchor.clone(),
                              "residual": None if b.residual is None else b.residual.clone()}
                             for b in bs] for bs in self._buckets],
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the model and inner optimizer are restored by their owners,
        before this call)."""
        F = self.fragments
        if int(state.get("fragments", 1)) != F:
            raise ValueError(f"state has fragments={state.get('fragments', 1)}, this engine has fragments={F}")
        self.rounds = int(state["rounds"])
        self.bytes_sent = int(state["bytes_sent"])
        self.round_start = int(state["round_start"])
        self.current_period = int(state["current_period"])
        self._natural_period = int(state["natural_period"])
        self.last_loss = state["last_loss"]
        fs = state.get("fragment_state")
        if fs is None:  # a checkpoint of the engine before fragments (F = 1)
            fs = {"next": [state["next_sync"]], "period": [self.current_period], "loss_sum": [state["loss_sum"]],
                  "loss_count": [state["loss_count"]], "dirty": [state["dirty"]], "outer_rounds": [self.rounds]}
        self._next = [int(v) for v in fs["next"]]
        self._period = [int(v) for v in fs["period"]]
        self._loss_sum = [float(v) for v in fs["loss_sum"]]
        self._loss_count = [int(v) for v in fs["loss_count"]]
        self._dirty = [bool(v) for v in fs["dirty"]]
        self._outer_rounds = [int(v) for v in fs["outer_rounds"]]
        self.fragment_syncs = int(state.get("fragment_syncs", self.rounds))
        self.peak_step_bytes = int(state.get("peak_step_bytes", 0))
        self._step_bytes = tuple(state.get("step_bytes", (-1, 0)))
        self._last_step = state.get("last_step")
        self.rule.load_state_dict(state["rule"])
        if self.outer_optimizers:
            if not state.get("anchors") or state.get("outer") is None:
                raise ValueError("state has no outer-optimizer state, but this engine has an outer_optimizer")
            saved = iter(state["anchors"])
            with torch.no_grad():
                for fa in self._anchors:
                    for a in fa:
                        a.copy_(next(saved))
            outer = state["outer"] if isinstance(state["outer"], list) else [state["outer"]]
            for o, s in zip(self.outer_optimizers, outer):
                o.load_state_dict(s)
        comp = state.get("compression")
        for f in range(F):
            self._refresh(f)
            if comp is None:
                continue
            if len(comp[f]) != len(self._buckets[f]):
                raise ValueError("state's compression buffers do not match this model's buckets")
            with torch.no_grad():
                for b, saved in zip(self._buckets[f], comp[f]):
                    for key in ("anchor", "residual"):
                        mine, theirs = getattr(b, key), saved[key]
                        if (mine is None) != (theirs is None) or (mine is not None and mine.shape != theirs.shape):
                            raise ValueError(f"state's compression {key} does not match this engine's options")
                        if mine is not None:
                            mine.copy_(theirs)
        self._pending = [None if p is None else _Pending([_Done(t) for t in p["totals"]], int(p["apply_at"]))
                         for p in state.get("pending", [None] * F)]

    def __repr__(self) -> str:
        return (
            f"LocalSGD(rule={self.rule!r}, world_size={self.world_size}, fragments={self.fragments}, "
            f"rounds={self.rounds}, bytes_sent={self.bytes_sent}, current_period={self.current_period})"
        )

    # ------------------------------------------------------------------ scheduling
    def _check_group(self) -> None:
        if not self._grouped and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise RuntimeError(
                f"LocalSGD was built before torch.distributed was initialized (world size 1, no "
                f"communication) but the process group now has {dist.get_world_size()} workers: {_NO_GROUP_HINT}"
            )

    def _global_rank0(self) -> int:
        if self.group is None:
            return 0
        return dist.get_global_rank(self.group, 0)

    def _lr_at(self, step: int) -> float | None:
        return None if self.schedule is None else float(self.schedule(step))

    def _start(self, step: int) -> None:
        """Round 0: H_0 from the rule; fragment f first syncs after ``ceil((f + 1) H_0 / F)`` steps."""
        natural = int(self.rule.next_period(step, self._lr_at(step), self.last_loss, None))
        F = self.fragments
        self._period = [1] * F
        for f in range(F):
            offset = max(1, math.ceil((f + 1) * natural / F))
            if self.total_steps is not None:
                offset = min(offset, self.total_steps - step)
            self._period[f] = offset
            self._next[f] = step + offset
        self._natural_period = natural
        self.round_start = step
        self.current_period = self._period[-1]

    def _schedule(self, f: int, step: int) -> None:
        """Fragment f's next round starts at ``step``: ``H`` from the rule at that step."""
        self.round_start = step
        if self.total_steps is not None and step >= self.total_steps:
            # past the end of the run (a loop that keeps going): sync after every step
            self._next[f] = step + 1
            self._period[f] = 1
            return
        natural = int(self.rule.next_period(step, self._lr_at(step), self.last_loss, None))
        period = natural if self.total_steps is None else min(natural, self.total_steps - step)
        self._natural_period = natural
        self._period[f] = self.current_period = max(1, period)
        self._next[f] = step + self._period[f]

    def _sync_fragment(self, f: int, step: int) -> None:
        """Fragment f's sync is due after ``step``: exchange (or start it), schedule its next round."""
        self._exchange(f, step)
        self._schedule(f, step + 1)
        pending = self._pending[f]
        if pending is not None:
            last = self.total_steps is not None and step >= self.total_steps - 1
            pending.apply_at = step if last else min(step + self.delay, self._next[f] - 1)
            if pending.apply_at <= step:
                self._finish(f)

    # ------------------------------------------------------------------ exchange
    def _count(self, nbytes: int) -> None:
        self.bytes_sent += nbytes
        step = -1 if self._last_step is None else self._last_step
        prev_step, prev = self._step_bytes
        now = nbytes + (prev if prev_step == step else 0)
        self._step_bytes = (step, now)
        self.peak_step_bytes = max(self.peak_step_bytes, now)

    def _exchange(self, f: int, step: int | None = None) -> None:
        """Average fragment f (in place), or start its exchange (compressed or delayed)."""
        buckets = self._refresh(f)
        uses_loss = getattr(self.rule, "uses_loss", False)
        mean_loss = self._loss_sum[f] / self._loss_count[f] if self._loss_count[f] else 0.0
        has = 1.0 if self._loss_count[f] else 0.0
        if self._inplace:
            if uses_loss:
                slot = buckets[self._loss_bucket[f]].flat
                slot[-2], slot[-1] = mean_loss, has
            if self.world_size > 1:
                sent = 0
                for b in buckets:
                    dist.all_reduce(b.flat, op=dist.ReduceOp.SUM, group=self.group)
                    b.flat.div_(self.world_size)
                    sent += b.flat.numel() * b.flat.element_size()
                self._count(sent)
            if uses_loss:
                slot = buckets[self._loss_bucket[f]].flat
                self.last_loss = float(slot[-2] / slot[-1]) if float(slot[-1]) > 0 else self.last_loss
            if self.outer_optimizers:
                self._outer_step(f)
        else:
            sent = 0
            if uses_loss:  # tiny and blocking: the rule needs it now to choose the next period
                slot = torch.tensor([mean_loss, has], dtype=torch.float32)
                dist.all_reduce(slot, op=dist.ReduceOp.SUM, group=self.group)
                sent += 8
                self.last_loss = float(slot[0] / slot[1]) if float(slot[1]) > 0 else self.last_loss
            exchanges: list[Any] = []
            codec = self.codec
            if isinstance(codec, LRCompression):  # strength from the LR at the sync step
                at = step if step is not None else (self._last_step if self._last_step is not None else 0)
                codec = codec.codec_at(self._lr_at(at))
            self.last_codec = None if codec is None else codec
            with torch.no_grad():
                for b in buckets:
                    if self.codec is None:
                        ex = _ReduceSum(b.flat, self.group)
                    else:
                        payload, residual = compress_with_feedback(codec, b.flat - b.anchor, b.residual)
                        if residual is not None:
                            b.residual.copy_(residual)
                        ex = GatherSum(codec, payload, b.flat.numel(), b.flat.dtype, self.world_size, self.group)
                    exchanges.append(ex)
                    sent += ex.bytes
            self._count(sent)
            self._pending[f] = _Pending(exchanges)
        self.fragment_syncs += 1
        if f == self.fragments - 1:
            self.rounds += 1
        self._loss_sum[f], self._loss_count[f] = 0.0, 0
        self._dirty[f] = False

    def _finish(self, f: int) -> None:
        """Apply fragment f's exchange: ``x <- mix * x + (1 - mix) * x_global`` with ``x_global``
        the average (after the outer step in DiLoCo mode)."""
        pending = self._pending[f]
        self._pending[f] = None
        buckets = self._refresh(f, in_flight=True)
        totals = [e.wait() for e in pending.exchanges]
        K = self.world_size
        with torch.no_grad():
            local = [b.flat.clone() for b in buckets] if self.mix > 0 else None
            for b, total in zip(buckets, totals):
                if self.codec is None:
                    torch.div(total, K, out=b.flat)
                else:
                    torch.add(b.anchor, total / K, out=b.flat)
            if self.outer_optimizers:
                self._outer_step(f)
            for k, b in enumerate(buckets):
                if b.anchor is not None:
                    b.anchor.copy_(b.flat)
                if local is not None:
                    b.flat.mul_(1.0 - self.mix).add_(local[k], alpha=self.mix)

    # ------------------------------------------------------------------ buckets
    def _collect(self, f: int) -> list[torch.Tensor]:
        """Fragment f's tensors to average, in a fixed order: parameters, buffers, momentum."""
        frag = self._frag_of
        params = [p for p in self.model.parameters() if p.is_floating_point() and p.numel() > 0
                  and frag.get(id(p), 0) == f]
        out = list(params)
        if self.average_buffers:
            out += [b for b in self.model.buffers() if b.is_floating_point() and b.numel() > 0
                    and frag.get(id(b), 0) == f]
        if self.average_momentum:
            for p in params:
                st = self.optimizer.state.get(p, {})
                for key in sorted(st):
                    v = st[key]
                    if torch.is_tensor(v) and v.is_floating_point() and v.shape == p.shape and v.numel() > 0:
                        out.append(v)
        return out

    def _refresh(self, f: int, in_flight: bool = False) -> list[_Bucket]:
        """Fragment f's buckets, rebuilt if its tensors changed, else re-pointed."""
        tensors = self._collect(f)
        if [(t.shape, t.dtype, t.device) for t in tensors] != self._signature[f]:
            if in_flight:
                raise RuntimeError(
                    f"fragment {f}: the tensors to average changed while its exchange was in flight "
                    f"(delay={self.delay}); build LocalSGD after the optimizer has its state"
                )
            self._build(f, tensors)
        else:
            self._repoint(f, tensors)
        return self._buckets[f]

    def _build(self, f: int, tensors: list[torch.Tensor]) -> None:
        """Lay ``tensors`` out in flat buffers (per device and dtype, up to bucket_bytes each) and
        re-point each tensor at its slice. Compression anchors and residuals follow their tensors;
        a tensor seen for the first time (momentum created by the first step) has anchor 0."""
        carried: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for b in self._buckets[f]:
            off = 0
            for t in b.tensors:
                n = t.numel()
                carried[id(t)] = tuple(None if x is None else x[off : off + n].clone() for x in (b.anchor, b.residual))
                off += n
        self._signature[f] = [(t.shape, t.dtype, t.device) for t in tensors]
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
        uses_loss = getattr(self.rule, "uses_loss", False) and self._inplace
        if uses_loss and not plan:
            plan.append(((torch.device("cpu"), torch.float32), []))
        self._loss_bucket[f] = len(plan) - 1 if uses_loss else None
        compressed = not self._inplace and self.codec is not None
        self._buckets[f] = []
        with torch.no_grad():
            for j, ((device, dtype), index) in enumerate(plan):
                ts = [tensors[i] for i in index]
                n = sum(t.numel() for t in ts) + (2 if j == self._loss_bucket[f] else 0)
                flat = torch.zeros(n, device=device, dtype=dtype)
                views, off = [], 0
                for t in ts:
                    v = flat[off : off + t.numel()].view(t.shape)
                    v.copy_(t)
                    t.data = v
                    views.append(v)
                    off += t.numel()
                bucket = _Bucket(flat=flat, index=list(index), tensors=ts, views=views)
                if compressed:
                    bucket.anchor = torch.zeros_like(flat)
                    bucket.residual = torch.zeros_like(flat) if self.error_feedback else None
                    off = 0
                    for t in ts:
                        anchor, residual = carried.get(id(t), (None, None))
                        if anchor is not None:
                            bucket.anchor[off : off + t.numel()] = anchor
                        if residual is not None and bucket.residual is not None:
                            bucket.residual[off : off + t.numel()] = residual
                        off += t.numel()
                self._buckets[f].append(bucket)

    def _init_anchors(self, averaged: bool) -> None:
        """Compressed mode: anchors = the starting values, identical on every worker (averaged in
        full precision first when the workers did not start from rank 0's copy; counted)."""
        with torch.no_grad():
            for bs in self._buckets:
                for b in bs:
                    b.anchor.copy_(b.flat)
                    if averaged:
                        dist.all_reduce(b.anchor, op=dist.ReduceOp.SUM, group=self.group)
                        b.anchor.div_(self.world_size)
                        self.bytes_sent += b.anchor.numel() * b.anchor.element_size()

    def _repoint(self, f: int, tensors: list[torch.Tensor]) -> None:
        """Copy back any tensor that no longer lives in its flat slice (replaced since the build)."""
        with torch.no_grad():
            for b in self._buckets[f]:
                for k, v in enumerate(b.views):
                    t = tensors[b.index[k]]
                    if t.data_ptr() != v.data_ptr() or t is not b.tensors[k] or t.stride() != v.stride():
                        v.copy_(t)
                        t.data = v
                        b.tensors[k] = t

    # ------------------------------------------------------------------ outer step
    def _outer_params(self, f: int) -> list[torch.Tensor]:
        """The parameters fragment f's outer optimizer moves: its averaged ones."""
        return [p for p in self.model.parameters() if p.is_floating_point() and p.numel() > 0
                and self._frag_of.get(id(p), 0) == f]

    def _outer_step(self, f: int) -> None:
        """DiLoCo: ``g = x_prev - x_avg``; outer optimizer step on ``x_prev``; model <- ``x_prev``."""
        params = self._outer_params(f)
        anchors = self._anchors[f]
        if [p.shape for p in params] != [a.shape for a in anchors]:
            raise ValueError(
                "outer_optimizer: the model's parameters changed after the engine was built "
                f"({len(anchors)} anchors, {len(params)} parameters now); build a new LocalSGD"
            )
        outer = self.outer_optimizers[f]
        at = getattr(self._outer_factory, "at", None)
        if getattr(self._outer_factory, "scheduled", False) and callable(at):
            lr, momentum = at(self._outer_rounds[f])
            for group in outer.param_groups:
                group["lr"], group["momentum"] = lr, momentum
        with torch.no_grad():
            for a, p in zip(anchors, params):
                a.grad = a - p.detach()
        outer.step()
        outer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for a, p in zip(anchors, params):
                p.copy_(a)
        self._outer_rounds[f] += 1
