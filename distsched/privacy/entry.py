"""DP-SGD in one's own PyTorch loop, as with Opacus' ``PrivacyEngine.make_private``: one call, then an
unchanged loop. Hooks on ``optimizer.step()`` do the rest (budget check, accounting, noise schedule, LR
coupling); nothing needs to be called per step.

    model, optimizer, loader = privacy.make_private(model, optimizer, loader, target_epsilon=3.0,
                                                    delta=1e-5, epochs=5, max_grad_norm=1.0)
    for epoch in range(5):
        for x, y in loader:                      # Poisson batches, expected size = loader's batch_size
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()                     # raises BudgetExhausted instead of overspending
    optimizer.privacy.epsilon

The returned loader draws Poisson batches (each example in with probability ``q = B / N``), the sampling
the accountant charges. A step taken without a new batch from it (e.g. from one's own shuffled loader) is
refused. ``max_physical_batch_size`` splits each logical batch into physical ones (Opacus'
``BatchSplittingSampler``, as in its ``BatchMemoryManager``): the optimizer clips and accumulates on each,
adds the noise once, and the accountant is charged once per logical step. Gradient accumulation by hand
(``k`` backward passes before one step) is charged ``min(1, k q)``, as Opacus does, and the budget guard
checks exactly that before the noise is drawn.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from opacus.optimizers import DPOptimizer
from opacus.utils.batch_memory_manager import BatchSplittingSampler
from torch import nn
from torch.utils.data import DataLoader, Sampler

from distsched._checks import check_int, check_positive
from distsched.privacy.accounting import check_delta
from distsched.privacy.empty import EmptyBatchCollate
from distsched.privacy.engine import PoissonBatches, PrivateTraining, private_training
from distsched.privacy.noise import noise_schedule_from_spec
from distsched.privacy.planner import plan, steps_for_epochs
from distsched.privacy.randomness import secret_seed


class EpochBatches(Sampler[list[int]]):
    """``batches_per_epoch`` (``round(1 / q)``) Poisson batches per pass, so ``for x, y in loader`` ends like
    an epoch; the draws continue ``poisson``'s resumable step counter."""

    def __init__(self, poisson: PoissonBatches) -> None:
        self.poisson = poisson

    def __len__(self) -> int:
        return self.poisson.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(len(self)):
            batch = self.poisson.draw(self.poisson.step)
            self.poisson.step += 1
            yield batch


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    max_grad_norm: float | Sequence[float],
    delta: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    epochs: float | None = None,
    steps: int | None = None,
    accountant: str = "rdp",
    noise_schedule: str = "constant",
    max_physical_batch_size: int | None = None,
    lr_coupling: bool = False,
    noise_seed: int | None = None,
    clipping: str = "hooks",
    criterion: Callable[..., torch.Tensor] | None = None,
) -> tuple[Any, ...]:
    """Model, optimizer and Poisson loader for DP-SGD in a plain loop (see the module docstring).

    Args:
        data_loader: a DataLoader built with ``batch_size=B``: its data set and collate function are kept,
            ``B`` becomes the expected batch size, ``q = B / len(dataset)``.
        noise_multiplier: the noise level; left out, it is planned so that ``steps`` (or ``epochs``) steps
            spend exactly ``target_epsilon``.
        target_epsilon: the budget: ``optimizer.step()`` raises :class:`~distsched.privacy.BudgetExhausted`
            (taking no step, recording nothing) when a step would exceed it.
        max_grad_norm: the clipping threshold ``C``, or a list of per-layer thresholds ``C_i`` (one per
            trainable parameter tensor, as Opacus' ``clipping="per_layer"``; the noise scales with
            ``sqrt(sum C_i^2)``).
        max_physical_batch_size: virtual steps: physical batches of at most this size, one charge per
            logical batch.
        noise_seed: ``None`` (default): secret noise and sampling (``os.urandom``), never saved. An int:
            reproducible noise and batches, NOT private against anyone who knows it.
        clipping: ``hooks`` (default), ``functorch``, ``ew``, ``ghost`` or ``auto``
            (:mod:`distsched.privacy.clipping`). ``ghost`` (and ``auto``, which may pick it) needs ``criterion``.
        criterion: the loss (``reduction="mean"``); given, the call returns ``(model, optimizer, criterion,
            loader)`` as Opacus does, with the criterion to call in the loop (ghost clipping's wrapper).

    ``optimizer.privacy`` is the :class:`~distsched.privacy.PrivateTraining` (``.epsilon``, ``.accountant``,
    ``.state_dict()`` for checkpoints). One process (``single`` mode); for worker groups use the training
    loop or :func:`~distsched.privacy.private_training`.
    """
    if not isinstance(data_loader, DataLoader) or data_loader.batch_size is None:
        raise ValueError("data_loader: give a torch DataLoader built with batch_size=B (B becomes the expected "
                         f"Poisson batch size), got {type(data_loader).__name__} without a batch_size")
    if isinstance(max_grad_norm, (int, float)):
        check_positive("max_grad_norm", max_grad_norm)
    check_delta(delta)
    if max_physical_batch_size is not None:
        check_int("max_physical_batch_size", max_physical_batch_size, 1)
    dataset = data_loader.dataset
    n = len(dataset)  # type: ignore[arg-type]
    q = min(1.0, data_loader.batch_size / n)
    total = steps if steps is not None else (steps_for_epochs(epochs, q) if epochs is not None else None)
    shape = noise_schedule_from_spec(noise_schedule, total_steps=total or 1, interval=max(1, int(1.0 / q)))
    if noise_multiplier is None:
        if target_epsilon is None or total is None:
            raise ValueError("give noise_multiplier, or target_epsilon with epochs or steps to plan it")
        noise_multiplier = plan(target_epsilon=target_epsilon, delta=delta, sample_rate=q, steps=total,
                                noise_schedule=shape, accountant=accountant).noise_multiplier
    training = private_training(
        model, optimizer, sample_rate=q, expected_batch_size=q * n, max_grad_norm=max_grad_norm, delta=delta,
        noise=shape.with_sigma(noise_multiplier), accountant=accountant, target_epsilon=target_epsilon,
        lr_coupling=lr_coupling, noise_seed=noise_seed, clipping=clipping,
    )
    if criterion is None and training.clipping == "ghost":
        raise ValueError(f"clipping {clipping!r} uses ghost clipping: pass criterion=<your loss> and call the "
                         "criterion make_private returns")
    poisson = PoissonBatches(np.arange(n), q, seed=secret_seed() if noise_seed is None else noise_seed)
    batches: Sampler[list[int]] = EpochBatches(poisson)
    if max_physical_batch_size is not None:
        batches = BatchSplittingSampler(sampler=batches, max_batch_size=max_physical_batch_size,
                                        optimizer=training.optimizer)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=0,
                        collate_fn=EmptyBatchCollate.for_dataset(dataset, poisson.indices, data_loader.collate_fn))
    _hook_step(training, poisson)
    training.optimizer.privacy = training  # type: ignore[attr-defined]
    if criterion is not None:
        return training.model, training.optimizer, training.loss_fn(criterion), loader
    return training.model, training.optimizer, loader


def _hook_step(training: PrivateTraining, poisson: PoissonBatches) -> None:
    """After each real (not skipped) ``optimizer.step()``: the noise schedule and LR coupling advance.
    Before it: a new logical batch must have come from the Poisson loader."""
    opt = training.optimizer
    inner = opt.step
    taken = [0]

    def step(self: DPOptimizer, closure: Any = None) -> Any:
        real = not opt._check_skip_next_step(pop_next=False)
        if real and poisson.step <= taken[0]:
            raise ValueError(
                "optimizer.step(): no new batch from the Poisson loader make_private returned since the last "
                "step; train on that loader (a shuffled DataLoader is not the Poisson sampling the accountant charges)"
            )
        out = inner(closure)
        if real and not opt._is_last_step_skipped:
            taken[0] += 1
            training.after_step()
        return out

    opt.step = types.MethodType(step, opt)  # type: ignore[method-assign]
