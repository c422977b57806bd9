"""DP-SGD for one worker of a training run (the ``privacy`` block of the training config).

:func:`attach_privacy` takes plain arguments (model, optimizer, data set, every worker's shard, the run's
length) and returns the :class:`~distsched.privacy.PrivateTraining` plus the worker's Poisson loader. The
sample rates follow :mod:`distsched.privacy.engine`:

* ``group`` (and one worker): ``q = W B / N`` on every shard, global expected batch ``qN``, ``qN / W`` per
  worker; the accountant is charged ``(sigma_t, q)`` per step.
* ``local``: ``q_k = B / N_k`` on worker k's shard, expected batch ``B``; worker k is charged ``(sigma_t, q_k)``,
  the run spends the max over workers (:func:`run_epsilon`). With ``target_epsilon`` alone the noise level is
  planned for the largest ``q_k``, so no worker exceeds the target.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from opacus.optimizers.utils import params as opacus_params
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distsched._checks import check_int
from distsched.privacy.clipping import check_per_layer, per_layer_norms
from distsched.privacy.config import PrivacyConfig, privacy_config
from distsched.privacy.engine import PrivateTraining, all_reduce_scalar, poisson_loader, private_training
from distsched.privacy.noise import noise_schedule_from_spec
from distsched.privacy.planner import plan
from distsched.privacy.randomness import NOT_PRIVATE, secret_seed

#: metrics-record keys computed from the training data without noise (the raw loss): a DP run lists them
#: under ``not_private`` in every record, so that they are not published by mistake.
NOT_PRIVATE_METRICS: tuple[str, ...] = ("loss",)


def resolve_mode(mode: str, world_size: int, sync_every_step: bool) -> str:
    """``single`` for one worker; ``auto`` -> ``group`` when parameters are averaged every step, else ``local``."""
    if world_size == 1:
        return "single"
    if mode == "auto":
        return "group" if sync_every_step else "local"
    return mode


def attach_privacy(
    config: PrivacyConfig | Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    shards: Sequence[np.ndarray],
    rank: int,
    *,
    batch_size: int,
    total_steps: int,
    seed: int = 0,
    sync_every_step: bool = True,
) -> tuple[PrivateTraining, DataLoader]:
    """Wrap one worker for DP-SGD; returns the private training state and the worker's Poisson loader
    (its resumable sampler is ``loader.batch_sampler``). The noise and the batches come from a secret
    per-process seed, unless ``privacy.reproducible`` derives them from ``seed`` (then not private)."""
    cfg = privacy_config(config)
    world = len(shards)
    check_int("rank", rank, 0)
    check_int("batch_size", batch_size, 1)
    check_int("total_steps", total_steps, 1)
    mode = resolve_mode(cfg.mode, world, sync_every_step)
    sizes = [len(s) for s in shards]
    n_total = sum(sizes)
    if mode == "local":
        q_rank = min(1.0, batch_size / sizes[rank])
        expected = q_rank * sizes[rank]  # = B unless B > N_k
    else:
        q_rank = min(1.0, batch_size * world / n_total)
        expected = q_rank * n_total / world
    shape, level = plan_noise(cfg, sizes, batch_size=batch_size, total_steps=total_steps,
                              sync_every_step=sync_every_step)
    if cfg.reproducible and rank == 0:
        warnings.warn(NOT_PRIVATE, UserWarning, stacklevel=2)
    check_clipping(cfg, model, mode)
    threshold = cfg.clipping_threshold
    if threshold is None:  # per-layer, C split over the optimizer's tensors
        threshold = per_layer_norms(opacus_params(optimizer), cfg.max_grad_norm)
    training = private_training(
        model, optimizer, sample_rate=q_rank, expected_batch_size=expected, max_grad_norm=threshold,
        delta=cfg.delta, noise=shape.with_sigma(level), accountant=cfg.accountant,
        target_epsilon=cfg.target_epsilon, mode=mode, lr_coupling=cfg.lr_coupling,
        coupling_beta=cfg.coupling_beta, min_lr_factor=cfg.min_lr_factor, eps_error=cfg.eps_error,
        noise_seed=seed * 1_000_003 + rank if cfg.reproducible else None, clipping=cfg.clipping,
    )
    loader = poisson_loader(dataset, shards[rank], q_rank, seed=seed if cfg.reproducible else secret_seed(), rank=rank)
    return training, loader


def plan_noise(
    config: PrivacyConfig | Mapping[str, Any],
    shard_sizes: Sequence[int],
    *,
    batch_size: int,
    total_steps: int,
    sync_every_step: bool = True,
) -> tuple[Any, float]:
    """The run's noise schedule shape and its level ``sigma`` (``noise_multiplier``, or planned so that
    ``total_steps`` at the planning rate spend exactly ``target_epsilon``: :func:`~distsched.privacy.plan`).
    The planning rate is ``q = W B / N`` (single, group) or the largest ``q_k = B / N_k`` (local). The same on
    every worker; the driver calls it before anything starts, so an unreachable target is one line there."""
    cfg = privacy_config(config)
    world = len(shard_sizes)
    if resolve_mode(cfg.mode, world, sync_every_step) == "local":
        q_plan = min(1.0, max(batch_size / n for n in shard_sizes))
    else:
        q_plan = min(1.0, batch_size * world / sum(shard_sizes))
    interval = cfg.interval if cfg.interval is not None else max(1, int(1.0 / q_plan))  # same on every worker
    shape = noise_schedule_from_spec(cfg.noise_schedule, total_steps=total_steps, interval=interval)
    if cfg.noise_multiplier is not None:
        return shape, cfg.noise_multiplier
    assert cfg.target_epsilon is not None
    return shape, plan(
        target_epsilon=cfg.target_epsilon, delta=cfg.delta, sample_rate=q_plan, steps=total_steps,
        noise_schedule=shape, accountant=cfg.accountant, interval=interval, eps_error=cfg.eps_error,
    ).noise_multiplier


def check_clipping(config: PrivacyConfig | Mapping[str, Any], model: nn.Module, mode: str) -> None:
    """Refuse, in one line, a clipping set-up that cannot run in DP mode ``mode`` (``single``, ``group`` or
    ``local``): ghost clipping across workers, per-layer clipping with a mode Opacus has no per-layer
    optimizer for, or ``clipping_norms`` that do not match the model's trainable tensors. The CLI calls it
    before anything starts (:func:`check_run`)."""
    cfg = privacy_config(config)
    if cfg.per_layer:
        check_per_layer(cfg.clipping, mode)
        per_layer_norms([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm, cfg.clipping_norms)
    elif cfg.clipping == "ghost" and mode == "group":
        raise ValueError("privacy.clipping: 'ghost' is not available in group mode (DP-SGD across workers); "
                         "use hooks, functorch or auto")


def check_run(config: PrivacyConfig | Mapping[str, Any], model: nn.Module, world_size: int,
              sync_every_step: bool) -> None:
    """:func:`check_clipping` for a run of ``world_size`` workers (its DP mode as :func:`resolve_mode` picks it)."""
    cfg = privacy_config(config)
    check_clipping(cfg, model, resolve_mode(cfg.mode, world_size, sync_every_step))


def run_epsilon(training: PrivateTraining) -> float:
    """Epsilon spent by the run: this worker's in ``single``/``group`` mode, the max over workers in ``local``
    mode (an all-reduce: call it on every worker)."""
    eps = training.epsilon
    return all_reduce_scalar(eps, "max") if training.mode == "local" else eps
