"""DP-SGD with Opacus' own pieces, driven by distsched's accountant, budget guard, noise schedule and LR coupling.

Three modes, one accounting rule each:

* ``single``: one process; Opacus ``GradSampleModule`` + ``DPOptimizer``; Poisson sampling at rate ``q``.
* ``group`` (DP-SGD across workers): every rank Poisson-samples its own shard at the same rate ``q``, so
  the union of the local batches is a Poisson sample of the whole data set at rate ``q`` (expected batch
  ``qN``, ``qN / W`` per worker). Opacus' ``DistributedDPOptimizer`` clips per example on each rank, adds
  the noise ``N(0, sigma^2 C^2)`` once (rank 0), all-reduces and divides by the global expected batch size.
  One Gaussian mechanism per step on the whole data set: the run spends ``eps(sigma, q, T)``.
* ``local`` (DP local SGD): each rank runs DP-SGD on its own disjoint shard with ``q_k = B_k / N_k`` and
  its own noise, and the models are averaged every ``H`` steps. An example lives on one shard only; the
  other ranks' steps are functions of their own data and of released (noisy) models, so by adaptive
  composition the privacy loss for that example is that of its rank's ``T`` steps alone (parallel
  composition over disjoint data), and averaging is post-processing. The run spends
  ``max_k eps(sigma, q_k, T)``, whatever ``H`` is, and however ``H`` changes during the run.

The guard is checked before every step (:meth:`PrivateTraining.allows_next_step`); ranks agree with an
all-reduce (MIN) so that all stop at the same step.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer
from opacus.optimizers.utils import params as opacus_params
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from distsched._checks import check_choice, check_int, check_positive
from distsched.privacy.accounting import Accountant, check_delta, check_sample_rate
from distsched.privacy.clipping import check_per_layer, per_layer_norms, resolve_clipping, supports
from distsched.privacy.coupling import NoiseAwareLR
from distsched.privacy.empty import EmptyBatchCollate
from distsched.privacy.ghost import mark_clipped
from distsched.privacy.guard import BudgetExhausted, BudgetGuard
from distsched.privacy.noise import ConstantNoise, NoiseSchedule, NoiseScheduler
from distsched.privacy.randomness import noise_generator
from distsched.privacy.resume import check_resume

MODES: tuple[str, ...] = ("single", "group", "local")


def all_reduce_scalar(value: float, op: str) -> float:
    """``min`` or ``max`` of ``value`` over the process group (``value`` itself without one). The tensor
    lives where the backend wants it (CUDA for NCCL, CPU for gloo)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else None
    t = torch.tensor([value], dtype=torch.float64, device=device)
    reduce_op = torch.distributed.ReduceOp.MIN if op == "min" else torch.distributed.ReduceOp.MAX
    torch.distributed.all_reduce(t, op=reduce_op)
    return float(t.item())


class PoissonBatches(Sampler[list[int]]):
    """Poisson sampling (each index of ``indices`` in the batch independently with probability ``q``, as
    Opacus' ``UniformWithReplacementSampler``), endless and resumable: batch ``t`` comes from a generator
    seeded with ``(seed, rank, t)``, so the whole state is ``t``. For a private run ``seed`` is secret
    (:func:`distsched.privacy.randomness.secret_seed`) and not saved: a resume then draws fresh batches."""

    def __init__(self, indices: Sequence[int] | np.ndarray, sample_rate: float, seed: int = 0, rank: int = 0) -> None:
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size == 0:
            raise ValueError("indices must not be empty")
        self.sample_rate = check_sample_rate(sample_rate)
        self.seed = check_int("seed", seed, 0)
        self.rank = check_int("rank", rank, 0)
        self.step = 0

    @property
    def expected_batch_size(self) -> float:
        return self.sample_rate * len(self.indices)

    @property
    def batches_per_epoch(self) -> int:
        """``max(1, round(1 / q))``: steps per expected pass over the indices."""
        return max(1, round(1.0 / self.sample_rate))

    @property
    def epoch(self) -> int:
        return self.step // self.batches_per_epoch

    @property
    def batch(self) -> int:
        """Position inside the current epoch (for progress, like ``ShardBatches``)."""
        return self.step % self.batches_per_epoch

    def draw(self, step: int) -> list[int]:
        """The indices of batch ``step`` (a pure function of ``(seed, rank, step)``)."""
        rng = np.random.default_rng([self.seed, self.rank, step, 0x5D9])
        mask = rng.random(len(self.indices)) < self.sample_rate
        return self.indices[mask].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            out = self.draw(self.step)
            self.step += 1
            yield out

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict["step"])


def poisson_loader(
    dataset: Dataset, indices: Sequence[int] | np.ndarray, sample_rate: float, seed: int = 0, rank: int = 0,
    collate_fn: Any = None,
) -> DataLoader:
    """An endless DataLoader of Poisson batches over ``indices``; an empty draw, the first one included, is a
    batch of 0 examples with the data's shapes and dtypes (:class:`~distsched.privacy.empty.EmptyBatchCollate`).
    Its sampler is ``loader.batch_sampler``."""
    sampler = PoissonBatches(indices, sample_rate, seed, rank)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=0,
                      collate_fn=EmptyBatchCollate.for_dataset(dataset, sampler.indices, collate_fn))


@dataclasses.dataclass
class PrivateTraining:
    """What :func:`make_private` returns; the training loop calls :meth:`allows_next_step` before and
    :meth:`after_step` after each ``optimizer.step()``."""

    model: nn.Module
    optimizer: DPOptimizer
    accountant: Accountant
    noise: NoiseScheduler
    sample_rate: float
    delta: float
    mode: str = "single"
    guard: BudgetGuard | None = None
    lr_controller: NoiseAwareLR | None = None
    generator: torch.Generator | None = None
    #: the noise comes from a seed the caller chose (not private against whoever knows it); ``False``:
    #: from a secret per-process seed, never saved (see :mod:`distsched.privacy.randomness`).
    reproducible: bool = False
    #: the per-example clipping mode in use (``hooks``, ``functorch``, ``ew`` or ``ghost``).
    clipping: str = "hooks"

    def loss_fn(self, criterion: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """The loss to call in the training step: ``criterion`` itself, or in ``ghost`` mode Opacus'
        ``DPLossFastGradientClipping`` around it (its ``backward()`` runs :meth:`GhostModule.backward`).
        ``criterion`` must average over the batch (``reduction="mean"``)."""
        if self.clipping != "ghost":
            return criterion
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        if getattr(criterion, "reduction", None) != "mean":  # Opacus' loss wrapper asserts it
            raise ValueError("clipping 'ghost' needs a loss module with reduction='mean' (e.g. nn.CrossEntropyLoss()), "
                             f"got reduction={getattr(criterion, 'reduction', None)!r}")
        inner = DPLossFastGradientClipping(self.model, self.optimizer, criterion, "mean")

        def ghost_loss(*args: Any, **kwargs: Any) -> Any:
            loss = inner(*args, **kwargs)

            def backward() -> None:  # one pass, the clipped sum from the hooks' book-keeping (privacy/ghost.py)
                self.model.backward(loss.loss_per_sample)
                self._ghost_backwards = getattr(self, "_ghost_backwards", 0) + 1  # the clipped pass ran

            loss.backward = backward
            return loss

        return ghost_loss

    @property
    def noise_multiplier(self) -> float:
        """The noise multiplier of the next step."""
        return float(self.optimizer.noise_multiplier)

    @property
    def lr_factor(self) -> float:
        """The noise-aware LR multiplier (1 without LR coupling)."""
        return 1.0 if self.lr_controller is None else float(self.lr_controller.factor)

    @property
    def epsilon(self) -> float:
        """Epsilon spent by this rank's steps (in ``local`` mode the run's is the max over ranks)."""
        return self.accountant.epsilon(self.delta)

    def allows_next_step(self) -> bool:
        """Whether the next step keeps epsilon within the budget (always, without a guard). With a process
        group, all ranks get the same answer (MIN over ranks)."""
        if self.guard is None:  # the same on every rank: no collective needed
            return True
        ok = self.guard.allows((self.noise_multiplier, self.sample_rate))
        if self.mode != "single":
            ok = all_reduce_scalar(1.0 if ok else 0.0, "min") > 0.5
        return ok

    def after_step(self) -> None:
        """Feed the LR controller (privatized gradient only) and set the next step's noise multiplier."""
        if self.lr_controller is not None:
            nxt = float(self.noise.schedule(self.noise.step_count + 1))
            self.lr_controller.observe(self.optimizer, next_noise_multiplier=nxt)
        self.noise.step()

    def empty_step(self) -> None:
        """``optimizer.step()`` for an empty Poisson draw, without a forward or backward pass (Opacus' functorch,
        ExpandedWeights and ghost modes refuse a batch of 0 examples): per-example gradients of 0 rows, so the
        clipped sum is 0 and the update is the noise alone, ``N(0, sigma^2 C^2) / B_expected`` (``group``: the
        noise added once on rank 0, every rank joins the gradient all-reduce). The guard checks it and the
        accountant charges ``(sigma, q)`` as for any step: the Poisson mechanism includes its empty draws."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        for p in opt.params:
            if self.clipping == "ghost":  # Opacus' ghost optimizer takes p.grad as the clipped sum
                p.grad = mark_clipped(torch.zeros_like(p))
            else:
                p.grad_sample = p.new_zeros((0, *p.shape))
        if self.clipping == "ghost":
            self._ghost_backwards = 1  # the (empty) clipped pass, for _check_ghost
        opt.step()

    def charge_of_next_step(self) -> tuple[float, float]:
        """``(sigma, q)`` the accountant's hook will record for the coming ``optimizer.step()``: Opacus
        charges ``min(1, q k)`` for ``k`` backward passes accumulated since the last step."""
        samples = [getattr(p, "grad_sample", None) for p in self.optimizer.params]
        k = self.optimizer.accumulated_iterations if samples and all(g is not None for g in samples) else 1
        return self.noise_multiplier, min(1.0, self.sample_rate * k)

    def check_step(self) -> None:
        """Raise :class:`BudgetExhausted` (before any noise is drawn or anything recorded) when the coming
        real (not skipped) ``optimizer.step()`` would exceed the budget; installed on ``optimizer.step``."""
        if self.clipping == "ghost":  # one wrapped backward per (physical) step, see _check_ghost
            self._check_ghost()
        if self.optimizer._check_skip_next_step(pop_next=False):
            return
        if self.guard is None:
            return
        sigma, q = self.charge_of_next_step()
        if not self.guard.allows((sigma, q)):
            raise BudgetExhausted(
                f"this step (noise_multiplier={sigma:g}, sample_rate={q:g}) would exceed target_epsilon="
                f"{self.guard.target_epsilon:g} (spent {self.epsilon:.4f} in {self.accountant.steps} steps)"
            )

    def _check_ghost(self) -> None:
        """Ghost clipping clips only in its loss wrapper's backward: a plain ``loss.backward()`` leaves the
        gradients unclipped; and Opacus' ghost optimizer counts one batch per step whatever was accumulated,
        so two backward passes before one step would be charged ``q`` for ``2 q`` (virtual steps,
        ``max_physical_batch_size``, are the supported way to accumulate)."""
        count, self._ghost_backwards = getattr(self, "_ghost_backwards", 0), 0
        if count == 0:
            raise ValueError("clipping 'ghost': compute the loss with training.loss_fn(criterion) (make_private: "
                             "the criterion it returns); a plain loss.backward() does not clip")
        if count > 1:
            raise ValueError(f"clipping 'ghost': {count} backward passes before one step would be charged as one "
                             "batch; accumulate with virtual steps (max_physical_batch_size) or use clipping hooks")

    def state_dict(self) -> dict[str, Any]:
        """Accountant history, budget and accountant settings, noise-schedule step and LR-controller state;
        the noise generator's state only in reproducible mode (a secret one is never written)."""
        state: dict[str, Any] = {"accountant": self.accountant.state_dict(), "noise": self.noise.state_dict(),
                                 "delta": self.delta, "eps_error": self.accountant.eps_error,
                                 "reproducible": self.reproducible, "mode": self.mode}
        if self.generator is not None and self.reproducible:
            state["noise_rng"] = self.generator.get_state()
        if self.guard is not None:
            state["guard"] = self.guard.state_dict()
        if self.lr_controller is not None:
            state["lr_controller"] = self.lr_controller.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the spent budget. A resume that drops or loosens the budget or the accountant settings
        (no target where one was set, a larger target, another delta, accountant or a larger PRV
        ``eps_error``, ``reproducible`` flipped, a local-mode run in another mode) is refused with a
        ``ValueError`` naming the ``privacy.<key>`` (:func:`~distsched.privacy.resume.check_resume`); a smaller
        target is kept.
        A secure run continues with fresh secret noise; a reproducible one restores its generator."""
        self._check_settings(state)
        if self.guard is not None and "guard" in state:
            self.guard.load_state_dict(state["guard"])  # restores the shared accountant's history
        else:
            self.accountant.load_state_dict(state["accountant"])
        self.noise.load_state_dict(state["noise"])
        if self.generator is not None and self.reproducible and "noise_rng" in state:
            self.generator.set_state(state["noise_rng"])
        if self.lr_controller is not None and "lr_controller" in state:
            self.lr_controller.load_state_dict(state["lr_controller"])

    def _check_settings(self, state: dict[str, Any]) -> None:
        check_resume(state, target_epsilon=self.guard.target_epsilon if self.guard is not None else None,
                     delta=self.delta, accountant=self.accountant.mechanism, reproducible=self.reproducible,
                     eps_error=self.accountant.eps_error, mode=self.mode)


class PerExampleLoss(nn.Module):
    """A loss ``fn(output, target, reduction=...)`` as a module with a ``reduction`` attribute, as ghost
    clipping needs: ``reduction="none"`` gives one loss per example (the mean over its positions when the
    targets are per position), ``"mean"`` the mean over every target."""

    def __init__(self, fn: Callable[..., torch.Tensor], reduction: str = "mean") -> None:
        super().__init__()
        self.fn, self.reduction = fn, reduction

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.reduction == "none":
            return self.fn(output, target, reduction="none").reshape(target.shape[0], -1).mean(dim=1)
        return self.fn(output, target, reduction=self.reduction)


def check_model(model: nn.Module) -> None:
    """Refuse, in one line naming the fix, a model Opacus cannot compute per-example gradients for
    (BatchNorm mixes the examples of a batch)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(
            f"model: {errors[0]} ({len(errors)} layer(s) DP-SGD cannot train); replace them first with "
            "model = opacus.validators.ModuleValidator.fix(model) (BatchNorm -> GroupNorm)"
        )


def private_training(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    sample_rate: float,
    expected_batch_size: float,
    max_grad_norm: float | Sequence[float],
    delta: float,
    noise: NoiseSchedule | float,
    accountant: str = "rdp",
    target_epsilon: float | None = None,
    mode: str = "single",
    lr_coupling: bool = False,
    coupling_beta: float = 0.9,
    min_lr_factor: float = 0.0,
    eps_error: float = 0.01,
    noise_seed: int | None = None,
    clipping: str = "hooks",
) -> PrivateTraining:
    """Wrap ``model`` and ``optimizer`` for DP-SGD (the training loop's building block; for one's own loop
    see :func:`distsched.privacy.make_private`).

    Args:
        sample_rate: ``q`` charged to the accountant per step (``group``: the global rate; ``local``: this
            rank's ``B_k / N_k``).
        expected_batch_size: this rank's expected batch size (the denominator of the mean gradient; Opacus
            divides by it, never by the realized Poisson batch size).
        max_grad_norm: the flat clipping threshold ``C``; or, as Opacus' ``clipping="per_layer"``, a list of
            thresholds ``C_i``, one per trainable parameter tensor of ``optimizer`` in its order: per-layer
            clipping, noise std ``sigma sqrt(sum_i C_i^2)`` (:mod:`distsched.privacy.clipping`).
        noise: a noise schedule, or a constant noise multiplier.
        target_epsilon: with it, a :class:`BudgetGuard`: :meth:`PrivateTraining.allows_next_step` says when
            to stop, and ``optimizer.step()`` raises :class:`BudgetExhausted` rather than overspend.
        mode: ``single``, ``group`` or ``local`` (see the module docstring); ``group`` and ``local`` need an
            initialized torch.distributed process group.
        lr_coupling: attach a :class:`NoiseAwareLR` (read it as ``training.lr_controller.factor``).
        noise_seed: ``None`` (default): the noise comes from a secret seed (``os.urandom``) with Opacus'
            ``secure_mode`` noise, and is never saved. An int: reproducible noise from that seed, saved in
            :meth:`PrivateTraining.state_dict` so that a resume is bit-identical; not private against
            anyone who knows the seed.
        clipping: ``hooks``, ``functorch``, ``ew``, ``ghost`` or ``auto`` (:mod:`distsched.privacy.clipping`;
            ``ghost`` not in ``group`` mode, where ``auto`` skips it). In ``ghost`` mode the loss goes through
            :meth:`PrivateTraining.loss_fn`.
    """
    check_choice("mode", mode, MODES)
    q = check_sample_rate(sample_rate)
    check_positive("expected_batch_size", expected_batch_size)
    max_grad_norm, per_layer = _thresholds(optimizer, max_grad_norm)
    check_delta(delta)
    check_model(model)
    schedule = noise if isinstance(noise, NoiseSchedule) else ConstantNoise(check_positive("noise_multiplier", noise))
    if mode != "single" and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(f"mode {mode!r} needs an initialized torch.distributed process group")

    reproducible = noise_seed is not None
    seed = check_int("noise_seed", noise_seed, 0) if reproducible else None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = noise_generator(device, seed)  # Opacus draws the noise on the params' device
    opts = {"noise_multiplier": schedule(0), "max_grad_norm": max_grad_norm,
            "expected_batch_size": expected_batch_size, "generator": generator, "secure_mode": not reproducible}
    clip = _clipping_mode(model, clipping, mode, per_layer)
    gsm, dp_opt = _wrap(model, optimizer, clip, mode, max_grad_norm, opts, per_layer)
    acc = Accountant(accountant, eps_error=eps_error)
    dp_opt.attach_step_hook(acc.optimizer_hook(q))
    guard = BudgetGuard(target_epsilon, delta, acc) if target_epsilon is not None else None
    controller = None
    if lr_coupling:
        dim = sum(p.numel() for p in gsm.parameters() if p.requires_grad)
        controller = NoiseAwareLR(dim, beta=coupling_beta, min_factor=min_lr_factor)
    training = PrivateTraining(
        model=gsm, optimizer=dp_opt, accountant=acc, noise=NoiseScheduler(dp_opt, schedule), sample_rate=q,
        delta=delta, mode=mode, guard=guard, lr_controller=controller, generator=generator,
        reproducible=reproducible, clipping=clip,
    )
    _guard_step(training)
    return training


def _thresholds(optimizer: torch.optim.Optimizer, max_grad_norm: float | Sequence[float]) -> tuple[Any, bool]:
    """``(C, False)`` for a flat threshold, or ``([C_i], True)`` checked against the optimizer's tensors."""
    if isinstance(max_grad_norm, (int, float)):
        check_positive("max_grad_norm", max_grad_norm)
        return max_grad_norm, False
    return per_layer_norms(opacus_params(optimizer), 0.0, list(max_grad_norm)), True


def _clipping_mode(model: nn.Module, clipping: str, mode: str, per_layer: bool) -> str:
    """The per-example clipping mode to use: per-layer clipping takes Opacus' per-layer optimizers' modes (hooks,
    functorch, ew; group: hooks, ew; auto -> hooks); ``auto`` in ``group`` mode skips ghost (hooks, else
    functorch); ghost in ``group`` mode is refused."""
    if per_layer:
        clip = check_per_layer(clipping, mode)
    elif clipping == "auto" and mode == "group":  # no ghost clipping across workers
        clip = "hooks" if supports(model, "hooks") else "functorch"
    else:
        clip = resolve_clipping(model, clipping)
    if clip == "ghost" and mode == "group":
        raise ValueError("clipping 'ghost' is not available in group mode; use hooks, functorch or auto")
    return clip


def _wrap(model: nn.Module, optimizer: torch.optim.Optimizer, clip: str, mode: str, max_grad_norm: Any,
          opts: dict[str, Any], per_layer: bool) -> tuple[nn.Module, DPOptimizer]:
    """Opacus' per-example gradient module of kind ``clip`` (around DPDDP in ``group`` mode) and its DP optimizer."""
    inner: nn.Module = model
    if mode == "group":
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        inner = DPDDP(model)  # DPDDP broadcasts rank 0's parameters
    gsm: nn.Module
    if clip == "ghost":
        from distsched.privacy.ghost import GhostDPOptimizer, GhostModule  # one backward pass, no copies

        gsm = GhostModule(inner, max_grad_norm=max_grad_norm)
        return gsm, GhostDPOptimizer(optimizer, **opts)
    if clip == "ew":
        from opacus.grad_sample import GradSampleModuleExpandedWeights

        gsm = GradSampleModuleExpandedWeights(inner)
    else:
        gsm = GradSampleModule(inner, force_functorch=clip == "functorch")
    return gsm, _dp_optimizer(optimizer, mode, opts, per_layer)


def _dp_optimizer(optimizer: torch.optim.Optimizer, mode: str, opts: dict[str, Any], per_layer: bool) -> DPOptimizer:
    """Opacus' DP optimizer over per-example gradients: per-layer (``max_grad_norm`` the list of ``C_i``; the
    optimizer's is ``sqrt(sum C_i^2)``) or flat; the distributed one in ``group`` mode."""
    if per_layer:
        from opacus.optimizers import DPPerLayerOptimizer, SimpleDistributedPerLayerOptimizer

        cls = SimpleDistributedPerLayerOptimizer if mode == "group" else DPPerLayerOptimizer
        return cls(optimizer, **opts)
    return DistributedDPOptimizer(optimizer, **opts) if mode == "group" else DPOptimizer(optimizer, **opts)


def _guard_step(training: PrivateTraining) -> None:
    """Make ``optimizer.step()`` check the budget against exactly what its hook will charge."""
    opt = training.optimizer
    inner = opt.step

    def step(self: DPOptimizer, closure: Any = None) -> Any:
        if closure is not None:
            with torch.enable_grad():
                closure()
        training.check_step()
        return inner()

    opt.step = types.MethodType(step, opt)  # type: ignore[method-assign]  # a method: torch's LR schedulers wrap it
