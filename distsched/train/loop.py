"""The ONE worker loop: model, data shard, optimizer, schedule adapter, sync engine, checkpoints and
metrics. It runs unchanged under Ray Train and under torchrun; what differs is the
:class:`~distsched.train.session.Session` handed to it.

Per step ``t`` (0-based), with ``lr_t = schedule(c.schedule_step(t)) * c.multiplier(t) * engine.lr_factor(t)``
(``c`` the config's controller, if any; without one the first two factors are ``schedule(t)``)::

    loss = train_step(model, optimizer, batch)      # forward, backward, optimizer.step()
    if (t + 1) % log_every == 0:                    # a metrics record: the loss averaged over workers
        update_controller(c, mean_loss, t)          # (already all-reduced for logging) feeds the controller
    engine.step(t, loss)                            # local SGD: average when the rule says so
    if (t + 1) % eval_every == 0:                   # (eval_every > 0) val_loss, val_accuracy of the
        validate(model, test)                       # workers' averaged model (train/validation.py)
    scheduler.step()                                # lr for step t + 1, closed form

Two seams for differentially private training: :func:`build_training` (where the optimizer and the
data loader are made) and :func:`train_step` (where one step is taken).

Resuming: a checkpoint holds each worker's own model and optimizer (models differ between syncs),
the schedule step, the controller state, the engine (rounds, bytes, round in progress, rule state),
RNG states, the data position and the metrics window; rank 0 truncates ``metrics.jsonl`` to the
checkpoint's step, so no step is counted twice and the resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distsched.data import DataBundle, ShardBatches, evaluate, token_cross_entropy
from distsched.report import MetricsWriter, RunFolder, line_plot, read_metrics
from distsched.train import checkpoint as ckpt
from distsched.train.config import TrainConfig, build_schedule, build_sync
from distsched.train.controller import build_controller, update_controller
from distsched.train.resize import world_lr_factor
from distsched.train.session import Session
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
               loss_fn: Any = token_cross_entropy) -> float:
    """SEAM (privacy): one optimizer step on one batch; returns the batch's mean loss. ``loss_fn``: the mean
    cross-entropy over every target, or DP's wrapper of it (ghost clipping)."""
    x, y = batch
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)  # a label per example, or a target per position (task "lm")
    loss.backward()
    optimizer.step()
    return float(loss.detach())


# ---------------------------------------------------------------------------------------- helpers
def _mean_over_workers(loss_sum: float, count: int, world_size: int, device: torch.device) -> float:
    if world_size > 1:
        t = torch.tensor([loss_sum, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        loss_sum, count = float(t[0]), int(t[1])
    return loss_sum / max(count, 1)


def _set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr * factor


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
    from distsched.control import Controlled
    from distsched.schedules import ScheduledLR
    from distsched.sync import LocalSGD

    torch.set_num_threads(cfg.threads)
    rank, world = session.rank, session.world_size
    if world != cfg.workers:
        raise ValueError(f"workers must match the launched world size {world}, got {cfg.workers}")
    folder = RunFolder.open(run_dir)
    device = device_for(session.local_rank)

    bundle: DataBundle = cfg.data.load(cfg.seed)
    shards = cfg.data.shards(bundle.targets, world, cfg.batch_size, cfg.seed)
    total = total_steps_of(cfg, min(len(s) for s in shards) // cfg.batch_size)

    torch.manual_seed(cfg.seed)  # identical initial replicas
    model = cfg.model.build(bundle.input_shape, bundle.num_classes).to(device)
    # SEAM (control): schedule x controller, read by the optimizer's LR and by the sync rule alike
    controller = build_controller(cfg.controller)
    schedule = build_schedule(cfg.schedule)
    rule, options = build_sync(cfg.sync, warmup_steps=int(getattr(schedule, "warmup_steps", 0)))
    if controller is not None:
        schedule = Controlled(schedule, controller)
    tr = build_training(cfg, model, bundle.train, shards[rank], rank, float(schedule(0)))
    priv = None  # DP-SGD (privacy block): Opacus optimizer, Poisson batches, accountant, budget guard
    if cfg.privacy is not None:
        from distsched.privacy import NOT_PRIVATE_METRICS, PerExampleLoss, attach_privacy, run_epsilon

        every_step = cfg.sync.get("name") == "fixed" and cfg.sync.get("h") == 1
        priv, tr.loader = attach_privacy(cfg.privacy, model, tr.optimizer, bundle.train, shards, rank,
                                         batch_size=cfg.batch_size, total_steps=total, seed=cfg.seed,
                                         sync_every_step=every_step)
        tr.optimizer, tr.sampler = priv.optimizer, tr.loader.batch_sampler
    optimizer = tr.optimizer
    scheduler = ScheduledLR(optimizer, schedule, multipliers=[1.0] * len(optimizer.param_groups))  # LR = schedule
    engine = LocalSGD(model, rule=rule, schedule=schedule, optimizer=optimizer, total_steps=total, **options)

    start, elapsed_before, window, finished = 0, 0.0, (0.0, 0), False
    # (lr, H, sigma) of the last step taken: the stop-at-budget record needs it even when that step ran
    # before a restart, so it travels in the checkpoint with the loss window it belongs to.
    last_step: tuple[float | None, int | None, float | None] = (None, None, None)
    restore = session.restore_dir()
    base_world, resized_from = world, None
    if restore is not None:
        state = ckpt.load_rank_state(restore, rank) if (Path(restore) / ckpt.rank_file(rank)).exists() else None
        if state is None or int(state["world_size"]) != world:  # resize on resume: average on load
            from distsched.train.resize import resize_rank_state

            old_world = int(ckpt.read_meta(restore).get("world_size", 1))
            if priv is not None and priv.mode == "local":
                raise ValueError(f"privacy: a run in local mode (one accountant per shard) resumes only at its "
                                 f"own {old_world} workers, got {world}")
            old_shards = cfg.data.shards(bundle.targets, old_world, cfg.batch_size, cfg.seed)
            states = [ckpt.load_rank_state(restore, r) for r in range(old_world)]
            state = resize_rank_state(states, world, rank, len(old_shards[0]) // cfg.batch_size,
                                      len(shards[rank]) // cfg.batch_size)
            resized_from = old_world
        base_world = int(state.get("base_world", state["world_size"]))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if controller is not None and state.get("controller") is None:
            raise ValueError(f"controller: the checkpoint {restore} has no controller state (a run without one)")
        if controller is None and state.get("controller") is not None:
            raise ValueError(f"controller: the checkpoint {restore} holds controller state, the config has no "
                             f"controller block")
        if controller is not None:  # before the scheduler, whose LR reads the controller
            controller.load_state_dict(state["controller"])
        scheduler.load_state_dict(state["scheduler"])
        engine.load_state_dict(state["engine"])
        if priv is not None:
            if not state.get("privacy"):
                raise ValueError(f"privacy: the checkpoint {restore} has no privacy state (a run without DP)")
            priv.load_state_dict(state["privacy"])  # the budget already spent: a resumed run cannot reset it
        tr.sampler.load_state_dict(state["sampler"])
        if state["rng"] is not None:
            ckpt.restore_rng(state["rng"])
        else:  # resized: fresh per-rank randomness, determined by (seed, rank, step)
            torch.manual_seed(cfg.seed + 1 + rank + 1_000_003 * int(state["step"]))
        start, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        window, finished = tuple(state["window"]), bool(state["finished"])
        last_step = tuple(state.get("last_step", last_step))
    else:
        torch.manual_seed(cfg.seed + 1 + rank)  # per-worker randomness (dropout, augmentation)
    world_factor = world_lr_factor(cfg.world_lr, world, base_world)  # 1.0 unless resized with a rule
    _set_lr(optimizer, scheduler.get_last_lr(),
            world_factor * engine.lr_factor(start) * (priv.lr_factor if priv else 1.0))

    if rank == 0 and bundle.manifest is not None:  # which corpus this run read (file list, content hash)
        (folder.root / "corpus.json").write_text(json.dumps(bundle.manifest, indent=1), encoding="utf-8")
    writer = MetricsWriter(folder.metrics_path) if rank == 0 else None
    if writer is not None:
        writer.truncate_after("step", start)

    def snapshot(step: int, elapsed: float, done: bool) -> dict[str, Any]:
        return {
            "step": step, "world_size": world, "base_world": base_world, "finished": done, "elapsed_s": elapsed,
            "window": window,
            "last_step": last_step,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "engine": engine.state_dict(), "sampler": tr.sampler.state_dict(), "rng": ckpt.capture_rng(),
            "privacy": priv.state_dict() if priv is not None else None,
            "controller": controller.state_dict() if controller is not None else None,
        }

    def save(step: int, elapsed: float, done: bool, metrics: Mapping[str, Any]) -> None:
        state = snapshot(step, elapsed, done)
        session.save(step, lambda d: ckpt.save_rank_state(d, rank, state), metrics)

    t0 = time.perf_counter()
    last: dict[str, Any] = {}
    batches = iter(tr.loader)
    loss_fn = priv.loss_fn(PerExampleLoss(token_cross_entropy)) if priv is not None else token_cross_entropy
    model.train()
    end, stopped_by_budget = total, False
    for t in range(start, total):
        if fault is not None:
            fault.maybe_fire(rank, t)
        if priv is not None and not priv.allows_next_step():  # the step would exceed the budget: stop here
            end, stopped_by_budget = t, True
            break
        lr_t = float(optimizer.param_groups[0]["lr"])  # applied: schedule x controller x compensation (x DP)
        h_t = engine.current_period
        factor_t = float(controller.multiplier(t)) if controller is not None else None
        sigma_t = priv.noise_multiplier if priv is not None else None
        last_step = (lr_t, h_t, sigma_t)
        loss = train_step(model, optimizer, next(batches), device, loss_fn)
        if priv is not None:
            priv.after_step()
        window = (window[0] + loss, window[1] + 1)
        done = t + 1
        mean_loss = None
        if done % cfg.log_every == 0 or done == total:
            mean_loss = _mean_over_workers(window[0], window[1], world, device)  # the one loss collective
            window = (0.0, 0)
            if controller is not None:  # same value on every rank: same decisions, same LR everywhere
                update_controller(controller, mean_loss, t)
        engine.step(t, loss)  # a new round's H is read from the controlled schedule
        scheduler.step()
        _set_lr(optimizer, scheduler.get_last_lr(),
                world_factor * engine.lr_factor(t + 1) * (priv.lr_factor if priv else 1.0))
        if mean_loss is not None:
            last = {
                "step": done, "epoch": tr.sampler.epoch + tr.sampler.batch / tr.sampler.batches_per_epoch,
                "lr": lr_t, "H": h_t, "loss": mean_loss, "rounds": engine.rounds, "bytes": engine.bytes_sent,
                "time_s": elapsed_before + time.perf_counter() - t0,
            }
            if priv is not None:
                last.update(epsilon=run_epsilon(priv), sigma=sigma_t, lr_factor=priv.lr_factor,
                            not_private=list(NOT_PRIVATE_METRICS))
            if controller is not None:
                last["controller_factor"] = factor_t
            if bundle.test is not None and due(done, cfg.eval_every, total):  # a collective: every rank
                last.update(validate(model, bundle.test, device, rank, world))  # the averaged model
            if writer is not None:
                writer.write(last)
                if echo:
                    print(
                        f"step {done}/{total}  lr {lr_t:.4g}  H {h_t}  loss {mean_loss:.4f}  "
                        f"rounds {engine.rounds}  bytes {engine.bytes_sent}"
                        + (f"  epsilon {last['epsilon']:.3f}" if "epsilon" in last else "")
                        + (f"  factor {factor_t:.4g}" if factor_t is not None else ""), flush=True,
                    )
        if done % cfg.checkpoint.every == 0 and done < total:
            save(done, elapsed_before + time.perf_counter() - t0, False, {"step": done, "loss": last.get("loss")})

    if stopped_by_budget and window[1] > 0:  # log the steps since the last record
        lr_last, h_last, sigma_last = last_step
        last = {"step": end, "lr": lr_last, "H": h_last,
                "loss": _mean_over_workers(window[0], window[1], world, device),
                "rounds": engine.rounds, "bytes": engine.bytes_sent, "epsilon": run_epsilon(priv), "sigma": sigma_last,
                "lr_factor": priv.lr_factor, "time_s": elapsed_before + time.perf_counter() - t0,
                "not_private": list(NOT_PRIVATE_METRICS)}
        if controller is not None:  # the factor of step end - 1 (no update since)
            last["controller_factor"] = float(controller.multiplier(end - 1))
        window = (0.0, 0)
        if writer is not None:
            writer.write(last)
    elapsed = elapsed_before + time.perf_counter() - t0
    engine.finalize()  # no-op when the last step synced (it does whenever total_steps is known)
    final_eps = run_epsilon(priv) if priv is not None else None  # collective in local mode: max over workers
    summary: dict[str, Any] = {}
    if rank == 0:
        records = read_metrics(folder.metrics_path)
        final = records[-1] if records else {}
        summary = {
            "name": cfg.name, "workers": world, "total_steps": total, "steps_done": int(final.get("step", start)),
            "final_loss": final.get("loss"), "sync_rounds": engine.rounds, "bytes_sent": engine.bytes_sent,
            "bytes_sent_all_workers": engine.bytes_sent * world, "wall_time_s": round(elapsed, 3),
            "resumed_from_step": start if restore is not None else None, "device": str(device),
            "resized_from_workers": resized_from,
            "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
            "run_dir": str(folder.root),
        }
        if priv is not None:
            summary.update(epsilon=final_eps, delta=priv.delta, privacy_mode=priv.mode, private=not priv.reproducible,
                           noise_multiplier=float(priv.noise.schedule(0)), stopped_by_budget=stopped_by_budget,
                           steps_done=end)
        if bundle.test is not None:
            summary.update(evaluate(model, bundle.test, device))
        if bundle.manifest is not None:
            summary["corpus_sha256"] = bundle.manifest.get("sha256")
    if not finished:
        save(end, elapsed, True, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
    else:
        session.report({"step": end})
    if writer is not None:
        writer.close()
        write_plots(folder)
        folder.write_model(model.state_dict())
        folder.write_summary(summary)
    return summary
