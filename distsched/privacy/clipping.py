"""Per-example clipping modes: how the per-example gradient norms are obtained (Opacus' ``grad_sample_mode``).

* ``hooks``: Opacus' module hooks materialize every per-example gradient (memory ``B x params``); a layer
  without a registered grad sampler falls back to ``torch.func`` (Opacus 1.6), so every layer is supported.
* ``functorch``: ``torch.func`` (``vmap(grad)``) for every layer, including layers without a hook.
* ``ew``: torch's ExpandedWeights.
* ``ghost``: ghost clipping (Li et al. 2022, "Large language models can be strong differentially
  private learners"; Bu et al. 2023): per-example norms from activations and output gradients without
  materializing the per-example gradients, and the clipped sum from what the backward hooks kept, in one
  backward pass (:mod:`distsched.privacy.ghost`: Linear, Embedding and LayerNorm in closed form,
  :mod:`distsched.privacy.ghost_norms`; any other layer with a grad sampler, Conv, GroupNorm..., through its
  per-example gradients; a layer called twice or sharing a parameter, through its per-example gradients summed
  over its uses; a parameter used outside a call of its layer is refused). Each example's computed contribution
  is at most ``C``: a batched Linear weight's norm is clipped as ``||grad_i|| + gamma_{n+3} S_i``, the bound on
  its float32 product's rounding over ``n = B T`` rows (``S_i = sum_t ||g_t|| ||a_t||``; Higham's ``gamma``),
  so its clip factor is smaller than hooks' by that relative margin (0.19% on random data at ``n = 4096``).
  The loss must go through :meth:`PrivateTraining.loss_fn` (Opacus' ``DPLossFastGradientClipping``); one
  backward per step.
* ``auto``: ghost when every trainable layer has a closed form (Linear, Embedding, LayerNorm) or a grad sampler
  (Conv, GroupNorm, ...), else hooks (a layer only ``torch.func`` differentiates per example). Ghost does a
  subset of the hooks' work (no per-example gradient of a closed-form layer, no weight gradient from autograd):
  at batch 64 on a CPU it took 1.07x the step time of distsched's hooks on the ``gpt`` transformer and 0.78x
  on a 3.3 M-parameter one since its Gram norms are float64 (float32: 0.79-0.91x and 0.56-0.63x, but an
  example could escape clipping by rounding); 1.10x non-private's peak tensor memory on ``gpt`` (hooks 1.77x,
  measured with float32 norms), 0.83-0.96x on the digits CNN (hooks: 0.89-1.09x);
  ``benchmarks/privacy_step_time.py --modes``, BENCHMARKS.md.

Per-layer clipping (Opacus' ``clipping="per_layer"``, McMahan et al. 2018, "A general approach to adding
differential privacy to iterative training procedures"): parameter tensor ``i`` (in the optimizer's order) of
every example is clipped to its own threshold ``C_i``, ``g_i <- g_i min(1, C_i / (||g_i|| + 1e-6))``. One
example then moves the clipped sum by at most ``C = sqrt(sum_i C_i^2)`` in L2, the sensitivity: the noise is
``N(0, sigma^2 C^2)`` and the accountant is charged ``(sigma, q)`` as with flat clipping at ``C``. It composes
as in Opacus 1.6 (``opacus.optimizers.get_optimizer_class``): with hooks, functorch and ew on one worker or in
``local`` mode (``DPPerLayerOptimizer``), with hooks and ew in ``group`` mode
(``SimpleDistributedPerLayerOptimizer``), never with ghost; ``auto`` then picks hooks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from torch import nn

from distsched._checks import check_choice, check_positive
from distsched.privacy.ghost import GhostModule

CLIPPING: tuple[str, ...] = ("auto", "hooks", "functorch", "ew", "ghost")
_NORMS = GhostModule.NORM_SAMPLERS  # distsched's ghost norms (privacy/ghost_norms.py)
_GRADS = GradSampleModuleFastGradientClipping.GRAD_SAMPLERS
#: layers torch's ExpandedWeights computes per-example gradients for.
_EW_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.LayerNorm, nn.GroupNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _trainable_leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def supports(model: nn.Module, mode: str) -> bool:
    """Whether ``mode`` computes per-example norms for every trainable layer of ``model``."""
    layers = _trainable_leaves(model)
    if mode in ("hooks", "functorch"):  # hooks fall back to torch.func for a layer without a grad sampler
        return True
    if mode == "ghost":  # a norm sampler (ghost norm) or a grad sampler (that layer's per-example gradients)
        return all(type(m) in _NORMS or type(m) in _GRADS for m in layers)
    if mode == "ew":
        return all(isinstance(m, _EW_LAYERS) for m in layers)
    return False


def resolve_clipping(model: nn.Module, clipping: str) -> str:
    """The mode to use: ``clipping`` itself (refused if it does not support a layer), or for ``auto`` the first
    of ghost (every layer in closed form or with a grad sampler) and hooks."""
    check_choice("clipping", clipping, CLIPPING)
    if clipping == "auto":
        return "ghost" if supports(model, "ghost") else "hooks"
    if not supports(model, clipping):
        names = sorted({type(m).__name__ for m in _trainable_leaves(model)})
        raise ValueError(f"clipping {clipping!r} does not support every layer of the model ({', '.join(names)}); "
                         "use clipping: auto")
    return clipping


#: modes per-layer clipping composes with, by DP mode (Opacus 1.6's ``get_optimizer_class``).
PER_LAYER_MODES: dict[str, tuple[str, ...]] = {"single": ("hooks", "functorch", "ew"),
                                               "local": ("hooks", "functorch", "ew"), "group": ("hooks", "ew")}


def check_per_layer(clipping: str, mode: str = "single") -> str:
    """The clipping mode to use with per-layer clipping in DP mode ``mode`` (``single``, ``local`` or
    ``group``): ``auto`` -> hooks; a mode Opacus has no per-layer optimizer for is refused in one line."""
    check_choice("clipping", clipping, CLIPPING)
    if clipping == "auto":
        return "hooks"
    allowed = PER_LAYER_MODES[mode]
    if clipping not in allowed:
        where = "across workers (group mode)" if mode == "group" else "at all"
        raise ValueError(f"privacy.per_layer: clipping {clipping!r} has no per-layer clipping {where}; "
                         f"use clipping: {' or '.join(allowed)} (or auto)")
    return clipping


def per_layer_norms(params: Sequence[nn.Parameter], max_grad_norm: float,
                    clipping_norms: Sequence[float] | None = None) -> list[float]:
    """The per-layer thresholds ``C_i``, one per trainable parameter tensor of ``params`` (the optimizer's
    order, as Opacus' ``max_grad_norm`` list): ``clipping_norms`` itself (its length must match), or the flat
    threshold split equally, ``C_i = C / sqrt(P)`` for ``P`` tensors (as Opacus' examples split it), so that
    the sensitivity ``sqrt(sum_i C_i^2)`` is ``C``."""
    count = sum(1 for p in params if p.requires_grad)
    if clipping_norms is None:
        check_positive("max_grad_norm", max_grad_norm)
        return [float(max_grad_norm) / math.sqrt(count)] * count
    norms = [check_positive("clipping_norms", float(c)) for c in clipping_norms]
    if len(norms) != count:
        raise ValueError(f"privacy.clipping_norms: one threshold per trainable parameter tensor, in the "
                         f"optimizer's order: the model has {count}, got {len(norms)}")
    return norms


def sensitivity(norms: Sequence[float]) -> float:
    """``sqrt(sum_i C_i^2)``: the L2 sensitivity of the per-layer clipped sum (what the noise scales with)."""
    return math.sqrt(sum(float(c) ** 2 for c in norms))
