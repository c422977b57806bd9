"""The ONE worker loop: model, data shard, optimizer, schedule adapter, sync engine, checkpoints and
metrics. It runs unchanged under Ray Train and under torchrun; what differs is the
:class:`~distsched.train.session.Session` handed to it.

Per step ``t`` (0-based), with ``lr_t = schedule(c.schedule_step(t)) * c.multiplier(t) * world_lr *
engine.lr_factor(t) * dp_factor`` (``c`` the config's controller, if any; without one the first two factors
are ``schedule(t)``; the product is set in one place, :meth:`~distsched.train.state.WorkerState.set_lr`)::

    loss = train_step(model, optimizer, batch)      # forward, backward, optimizer.step()
    if (t + 1) % log_every == 0:                    # a metrics record: the loss averaged over workers
        update_controller(c, mean_loss, t)          # (already all-reduced for logging) feeds the controller
    engine.step(t, loss)                            # local SGD: average when the rule says so
    if (t + 1) % eval_every == 0:                   # (eval_every > 0) val_loss, val_accuracy of the
        validate(model, test)                       # workers' averaged model (train/validation.py)
    scheduler.step()                                # lr for step t + 1, closed form

Two seams for differentially private training: :func:`build_training` (where the optimizer and the
data loader are made) and :func:`train_step` (where one step is taken).

Resuming: a checkpoint is each worker's :class:`~distsched.train.state.WorkerState` (its own model and
optimizer, the schedule step, the controller, the engine, DP, RNG states, the data position and the
metrics window); rank 0 truncates ``metrics.jsonl`` to the checkpoint's step, so no step is counted twice
and the resumed run equals the uninterrupted one. A checkpoint of another number of workers is averaged
on load (:mod:`distsched.train.resize`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distsched.data import DataBundle, ShardBatches, evaluate, examples_in, token_cross_entropy
from distsched.report import MetricsWriter, RunFolder, line_plot, read_metrics
from distsched.train import checkpoint as ckpt
from distsched.train.config import TrainConfig
from distsched.train.controller import update_controller
from distsched.train.session import Session
from distsched.train.state import WorkerState
from distsched.train.validation import due, validate


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """Test hook: worker ``rank`` kills its own process (SIGKILL) just before step ``step``, once:
    the first time it creates ``marker``; a restarted worker finds the marker and carries on."""

    rank: int
    step: int
    marker: str

    def maybe_fire(self, rank: int, step: int) -> None:
        if rank == self.rank and step == self.step and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


def total_steps_of(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """``steps``, or ``ceil(epochs * batches_per_epoch)`` of the smallest shard."""
    if cfg.steps is not None:
        return cfg.steps
    return max(1, math.ceil(float(cfg.epochs) * batches_per_epoch))


def device_for(local_rank: int) -> torch.device:
    """CUDA device ``local_rank`` when CUDA exists, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------- seams
@dataclasses.dataclass
class Training:
    """What :func:`build_training` makes: the optimizer, the loader and its resumable sampler."""

    optimizer: torch.optim.Optimizer
    loader: DataLoader
    sampler: ShardBatches


def make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def build_training(
    cfg: TrainConfig, model: nn.Module, train: Dataset, shard: np.ndarray, rank: int, lr: float
) -> Training:
    """SEAM (privacy): the optimizer and the data loader of one worker."""
    optimizer = make_optimizer(cfg, model, lr)
    sampler = ShardBatches(shard, cfg.batch_size, cfg.seed, rank)
    loader = DataLoader(train, batch_sampler=sampler, num_workers=0)
    return Training(optimizer, loader, sampler)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, device: torch.device,
               loss_fn: Any = token_cross_entropy, empty_step: Callable[[], None] | None = None) -> float:
    """SEAM (privacy): one optimizer step on one batch; returns the batch's mean loss. ``loss_fn``: the mean
    cross-entropy over every target, or DP's wrapper of it (ghost clipping). A batch of 0 examples (an empty
    Poisson draw, DP only) takes ``empty_step`` (DP's noise-only step) instead of a forward pass; its loss, a
    mean over no example, is nan (the loop weighs each loss by its examples)."""
    x, y = batch
    if empty_step is not None and examples_in(y) == 0:
        empty_step()
        return math.nan
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)  # a label per example, or a target per position (task "lm")
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------------------- helpers
def _mean_over_workers(loss_sum: float, count: int, world_size: int, device: torch.device) -> float | None:
    """``sum_k loss_sum_k / sum_k count_k`` over the workers (a collective); None when no worker counted any."""
    if world_size > 1:
        t = torch.tensor([loss_sum, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        loss_sum, count = float(t[0]), int(t[1])
    return loss_sum / count if count > 0 else None


def write_plots(folder: RunFolder) -> list[Path]:
    """``plots/lr.png``, ``period.png``, ``loss.png``, ``rounds.png`` (and ``epsilon.png`` with DP) from
    ``metrics.jsonl``."""
    records = [r for r in read_metrics(folder.metrics_path) if "step" in r]
    if not records:
        return []
    steps = [r["step"] for r in records]

    def col(key: str) -> list[float]:
        return [float(r.get(key) or 0.0) for r in records]

    plots = [
        line_plot(folder.plots / "lr.png", {"lr": (steps, col("lr"))}, title="learning rate", ylabel="lr"),
        line_plot(folder.plots / "period.png", {"H": (steps, col("H"))}, title="sync period H",
                  ylabel="local steps per round", step_style=True),
        line_plot(folder.plots / "loss.png", {"train loss": (steps, col("loss"))}, title="training loss",
                  ylabel="cross-entropy", logy=True),
        line_plot(folder.plots / "rounds.png", {"rounds": (steps, col("rounds"))}, title="sync rounds",
                  ylabel="rounds"),
    ]
    if any("epsilon" in r for r in records):  # DP runs: the budget spent over steps
        plots.append(line_plot(folder.plots / "epsilon.png", {"epsilon": (steps, col("epsilon"))},
                               title="privacy budget spent", ylabel="epsilon"))
    return plots


# ---------------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class _Run:
    """What one worker reads but never checkpoints: its config, place in the group, data and outputs."""

    cfg: TrainConfig
    session: Session
    folder: RunFolder
    device: torch.device
    bundle: DataBundle
    shards: list[np.ndarray]
    total: int
    fault: FaultInjection | None = None
    echo: bool = False
    writer: MetricsWriter | None = None
    #: the step the run (re)starts at, its elapsed time before, and the clock started then.
    start: int = 0
    elapsed_before: float = 0.0
    t0: float = 0.0

    @property
    def rank(self) -> int:
        return self.session.rank

    @property
    def world(self) -> int:
        return self.session.world_size

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0


def train_worker(
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    session: Session,
    *,
    fault: FaultInjection | None = None,
    echo: bool = False,
) -> dict[str, Any]:
    """Run (or resume) one worker of a training run; returns rank 0's summary (others: {}).

    torch.distributed must be initialized when ``session.world_size > 1``.
    """
    run = _open(cfg, run_dir, session, fault, echo)
    state, loader = _build(run)
    restore = session.restore_dir()
    resized_from = None
    if restore is not None:
        resized_from = _restore(state, run, Path(restore))
    else:
        torch.manual_seed(cfg.seed + 1 + run.rank)  # per-worker randomness (dropout, augmentation)
    run.start, run.elapsed_before, was_finished = state.step, state.elapsed_s, state.finished
    state.set_lr(run.start)

    if run.rank == 0 and run.bundle.manifest is not None:  # which corpus this run read (file list, hash)
        (run.folder.root / "corpus.json").write_text(json.dumps(run.bundle.manifest, indent=1), encoding="utf-8")
    if run.rank == 0:
        run.writer = MetricsWriter(run.folder.metrics_path)
        run.writer.truncate_after("step", run.start)

    run.t0 = time.perf_counter()
    end, stopped_by_budget = _steps(state, run, loader)
    if stopped_by_budget and state.window_steps > 0:  # log the steps since the last record (same on every rank)
        c = state.controller  # its factor of step end - 1 (no update since)
        factor = float(c.multiplier(end - 1)) if c is not None else None
        _write(run, _record(state, run, end, _window_mean(state, run), state.last_step, factor))
    elapsed = run.elapsed()
    state.engine.finalize()  # no-op when the last step synced (it does whenever total_steps is known)
    summary = _summary(state, run, end, stopped_by_budget, restore is not None, resized_from, elapsed)
    if not was_finished:
        _save(state, run, end, elapsed, True, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
    else:
        session.report({"step": end})
    if run.writer is not None:
        run.writer.close()
        write_plots(run.folder)
        run.folder.write_model(state.model.state_dict())
        run.folder.write_summary(summary)
    return summary


def _open(cfg: TrainConfig, run_dir: str | os.PathLike, session: Session, fault: FaultInjection | None,
          echo: bool) -> _Run:
    """Threads, the run folder, the device, the data and the shards, the run's length."""
    torch.set_num_threads(cfg.threads)
    if session.world_size != cfg.workers:
        raise ValueError(f"workers must match the launched world size {session.world_size}, got {cfg.workers}")
    folder = RunFolder.open(run_dir)
    device = device_for(session.local_rank)
    bundle: DataBundle = cfg.data.load(cfg.seed)
    shards = cfg.data.shards(bundle.targets, session.world_size, cfg.batch_size, cfg.seed)
    total = total_steps_of(cfg, min(len(s) for s in shards) // cfg.batch_size)
    return _Run(cfg, session, folder, device, bundle, shards, total, fault=fault, echo=echo)


def _build(run: _Run) -> tuple[WorkerState, DataLoader]:
    """The worker's model, optimizer, schedule x controller, DP (privacy block), sync engine, and its loader."""
    from distsched.control import Controlled
    from distsched.schedules import ScheduledLR
    from distsched.sync import LocalSGD

    cfg = run.cfg
    torch.manual_seed(cfg.seed)  # identical initial replicas
    model = cfg.model.build(run.bundle.input_shape, run.bundle.num_classes).to(run.device)
    # SEAM (control): schedule x controller, read by the optimizer's LR and by the sync rule alike
    controller = cfg.controller.build() if cfg.controller is not None else None  # stateful: this worker's own
    schedule = cfg.schedule
    rule = cfg.sync.build_rule(warmup_steps=int(getattr(schedule, "warmup_steps", 0)))
    if controller is not None:
        schedule = Controlled(schedule, controller)
    tr = build_training(cfg, model, run.bundle.train, run.shards[run.rank], run.rank, float(schedule(0)))
    priv = None  # DP-SGD (privacy block): Opacus optimizer, Poisson batches, accountant, budget guard
    if cfg.privacy is not None:
        from distsched.privacy import attach_privacy

        priv, tr.loader = attach_privacy(cfg.privacy, model, tr.optimizer, run.bundle.train, run.shards, run.rank,
                                         batch_size=cfg.batch_size, total_steps=run.total, seed=cfg.seed,
                                         sync_every_step=cfg.sync.every_step)
        tr.optimizer, tr.sampler = priv.optimizer, tr.loader.batch_sampler
    optimizer = tr.optimizer
    scheduler = ScheduledLR(optimizer, schedule, multipliers=[1.0] * len(optimizer.param_groups))  # LR = schedule
    engine = LocalSGD(model, rule=rule, schedule=schedule, optimizer=optimizer, total_steps=run.total,
                      **cfg.sync.engine_options())
    state = WorkerState(model, optimizer, scheduler, engine, tr.sampler, privacy=priv, controller=controller,
                        world_size=run.world, base_world=run.world, world_lr=cfg.world_lr)
    return state, tr.loader


def _restore(state: WorkerState, run: _Run, restore: Path) -> int | None:
    """Load this rank's checkpoint from ``restore`` (averaged from every old rank's when the run was saved
    at another number of workers: resize on resume); returns the old number of workers if resized."""
    cfg, rank, world = run.cfg, run.rank, run.world
    saved = ckpt.load_rank_state(restore, rank) if (restore / ckpt.rank_file(rank)).exists() else None
    resized_from, legacy = None, saved is not None and "window_steps" not in saved
    if saved is None or int(saved["world_size"]) != world:  # resize on resume: average on load
        from distsched.train.resize import check_resizable, resize_rank_state

        old_world = int(ckpt.read_meta(restore).get("world_size", 1))
        check_resizable(cfg, old_world, world)
        old_shards = cfg.data.shards(run.bundle.targets, old_world, cfg.batch_size, cfg.seed)
        states = [ckpt.load_rank_state(restore, r) for r in range(old_world)]
        legacy = "window_steps" not in states[0]
        saved = resize_rank_state(states, world, rank, len(old_shards[0]) // cfg.batch_size,
                                  len(run.shards[rank]) // cfg.batch_size)
        resized_from = old_world
    state.load_state_dict(saved, where=restore)
    if legacy:  # a checkpoint from before: window = (sum of step means, steps), batch_size examples a step
        state.window = (state.window[0] * cfg.batch_size, state.window[1] * cfg.batch_size)
    if saved["rng"] is None:  # resized: fresh per-rank randomness, determined by (seed, rank, step)
        torch.manual_seed(cfg.seed + 1 + rank + 1_000_003 * int(saved["step"]))
    return resized_from


def _steps(state: WorkerState, run: _Run, loader: DataLoader) -> tuple[int, bool]:
    """Steps ``run.start .. total - 1``; returns ``(end, stopped_by_budget)``: the step count reached, and
    whether the DP budget stopped the run before ``total``."""
    cfg, priv, controller, engine = run.cfg, state.privacy, state.controller, state.engine
    last: dict[str, Any] = {}
    batches = iter(loader)
    loss_fn: Any = token_cross_entropy
    if priv is not None:  # ghost clipping: Opacus' loss wrapper around the per-example loss
        from distsched.privacy import PerExampleLoss

        loss_fn = priv.loss_fn(PerExampleLoss(token_cross_entropy))
    state.model.train()
    for t in range(run.start, run.total):
        if run.fault is not None:
            run.fault.maybe_fire(run.rank, t)
        if priv is not None and not priv.allows_next_step():  # the step would exceed the budget: stop here
            return t, True
        lr_t = float(state.optimizer.param_groups[0]["lr"])  # applied (see WorkerState.set_lr)
        factor_t = float(controller.multiplier(t)) if controller is not None else None
        state.last_step = (lr_t, engine.current_period, priv.noise_multiplier if priv is not None else None)
        batch = next(batches)
        n = examples_in(batch[1])  # 0: an empty Poisson draw (DP), a noise-only step
        loss = train_step(state.model, state.optimizer, batch, run.device, loss_fn,
                          empty_step=priv.empty_step if priv is not None else None)
        if priv is not None:
            priv.after_step()
        if n > 0:  # the window's loss is the mean over its examples: sum(loss_t n_t) / sum(n_t)
            state.window = (state.window[0] + loss * n, state.window[1] + n)
        state.window_steps += 1
        done = t + 1
        logged = done % cfg.log_every == 0 or done == run.total
        mean_loss = None
        if logged:
            mean_loss = _window_mean(state, run)  # the one loss collective; None: no example in the window
            if controller is not None and mean_loss is not None:  # same value on every rank: same decisions
                update_controller(controller, mean_loss, t)
        engine.step(t, loss if n > 0 else None)  # a new round's H is read from the controlled schedule
        state.scheduler.step()
        state.set_lr(t + 1)
        if logged:
            last = _record(state, run, done, mean_loss, state.last_step, factor_t, epoch=_epoch(state.sampler))
            if run.bundle.test is not None and due(done, cfg.eval_every, run.total):  # a collective: every rank
                last.update(validate(state.model, run.bundle.test, run.device, run.rank, run.world))  # averaged model
            _write(run, last, progress=True)
        if done % cfg.checkpoint.every == 0 and done < run.total:
            _save(state, run, done, run.elapsed(), False, {"step": done, "loss": last.get("loss")})
    return run.total, False


def _window_mean(state: WorkerState, run: _Run) -> float | None:
    """The loss averaged over the examples of every worker's steps since the last record (a collective; None
    when they hold no example: every draw was empty); empties the window."""
    mean = _mean_over_workers(state.window[0], state.window[1], run.world, run.device)
    state.window, state.window_steps = (0.0, 0), 0
    return mean


def _epoch(sampler: Any) -> float:
    return sampler.epoch + sampler.batch / sampler.batches_per_epoch


def _record(state: WorkerState, run: _Run, step: int, loss: float | None,
            taken: tuple[float | None, int | None, float | None], factor: float | None,
            epoch: float | None = None) -> dict[str, Any]:
    """The metrics record after ``step`` steps: ``taken`` the (lr, H, sigma) of its last step, ``factor``
    the controller's multiplier then. With DP, ``epsilon`` is a collective in local mode (every rank calls)."""
    lr, h, sigma = taken
    record: dict[str, Any] = {"step": step}
    if epoch is not None:
        record["epoch"] = epoch
    record.update(lr=lr, H=h, loss=loss, rounds=state.engine.rounds, bytes=state.engine.bytes_sent,
                  time_s=run.elapsed())
    if state.privacy is not None:
        from distsched.privacy import NOT_PRIVATE_METRICS, run_epsilon

        record.update(epsilon=run_epsilon(state.privacy), sigma=sigma, lr_factor=state.privacy.lr_factor,
                      not_private=list(NOT_PRIVATE_METRICS))
    if state.controller is not None:
        record["controller_factor"] = factor
    return record


def _write(run: _Run, record: dict[str, Any], progress: bool = False) -> None:
    """Rank 0: append ``record`` to ``metrics.jsonl`` (and, for a ``progress`` record, echo it when asked)."""
    if run.writer is None:
        return
    run.writer.write(record)
    if run.echo and progress:
        factor, loss = record.get("controller_factor"), record.get("loss")
        loss_text = f"{loss:.4f}" if loss is not None else "-"  # None: no example since the last record
        print(
            f"step {record['step']}/{run.total}  lr {record['lr']:.4g}  H {record['H']}  loss {loss_text}  "
            f"rounds {record['rounds']}  bytes {record['bytes']}"
            + (f"  epsilon {record['epsilon']:.3f}" if "epsilon" in record else "")
            + (f"  factor {factor:.4g}" if factor is not None else ""), flush=True,
        )


def _save(state: WorkerState, run: _Run, step: int, elapsed: float, done: bool, metrics: Mapping[str, Any]) -> None:
    """Collective: every worker writes its :class:`WorkerState` after ``step`` steps."""
    state.step, state.elapsed_s, state.finished = step, elapsed, done
    saved = state.state_dict()
    run.session.save(step, lambda d: ckpt.save_rank_state(d, run.rank, saved), metrics)


def _summary(state: WorkerState, run: _Run, end: int, stopped_by_budget: bool, resumed: bool,
             resized_from: int | None, elapsed: float) -> dict[str, Any]:
    """Rank 0's ``summary.json`` (other ranks: {}); with DP a collective in local mode (epsilon)."""
    priv, final_eps = state.privacy, None
    if priv is not None:
        from distsched.privacy import run_epsilon

        final_eps = run_epsilon(priv)  # collective in local mode: max over workers
    if run.rank != 0:
        return {}
    records = read_metrics(run.folder.metrics_path)
    final = records[-1] if records else {}
    engine, world = state.engine, run.world
    summary: dict[str, Any] = {
        "name": run.cfg.name, "workers": world, "total_steps": run.total,
        "steps_done": int(final.get("step", run.start)), "final_loss": final.get("loss"),
        "sync_rounds": engine.rounds, "bytes_sent": engine.bytes_sent,
        "bytes_sent_all_workers": engine.bytes_sent * world,
        "wall_time_s": round(elapsed, 3), "resumed_from_step": run.start if resumed else None,
        "device": str(run.device), "resized_from_workers": resized_from,
        "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
        "run_dir": str(run.folder.root),
    }
    if priv is not None:
        summary.update(epsilon=final_eps, delta=priv.delta, privacy_mode=priv.mode, private=not priv.reproducible,
                       noise_multiplier=float(priv.noise.schedule(0)), stopped_by_budget=stopped_by_budget,
                       steps_done=end)
    if run.bundle.test is not None:
        summary.update(evaluate(state.model, run.bundle.test, run.device))
    if run.bundle.manifest is not None:
        summary["corpus_sha256"] = run.bundle.manifest.get("sha256")
    return summary
