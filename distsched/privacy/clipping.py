"""Per-example clipping modes: how the per-example gradient norms are obtained (Opacus' ``grad_sample_mode``).

* ``hooks``: Opacus' module hooks materialize every per-example gradient (memory ``B x params``); a layer
  without a registered grad sampler falls back to ``torch.func`` (Opacus 1.6), so every layer is supported.
* ``functorch``: ``torch.func`` (``vmap(grad)``) for every layer, including layers without a hook.
* ``ew``: torch's ExpandedWeights.
* ``ghost``: fast gradient clipping (Li et al. 2022, "Large language models can be strong differentially
  private learners"; Bu et al. 2023): per-example norms from activations and output gradients without
  materializing the per-example gradients, then a second backward pass of the reweighted loss. The loss must
  go through :meth:`PrivateTraining.loss_fn` (Opacus' ``DPLossFastGradientClipping``); one backward per step.
* ``auto``: the first of :data:`AUTO_ORDER` that supports every trainable layer of the model (step time and
  memory of each mode: ``benchmarks/privacy_step_time.py --modes``, BENCHMARKS.md).
"""

from __future__ import annotations

from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from torch import nn

from distsched._checks import check_choice

CLIPPING: tuple[str, ...] = ("auto", "hooks", "functorch", "ew", "ghost")
#: ``auto``'s preference: ghost (no per-example gradient is materialized), else hooks.
AUTO_ORDER: tuple[str, ...] = ("ghost", "hooks")
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
    if mode == "ghost":  # a norm sampler for every layer: no per-example gradient is materialized
        return all(type(m) in GradSampleModuleFastGradientClipping.NORM_SAMPLERS for m in layers)
    if mode == "ew":
        return all(isinstance(m, _EW_LAYERS) for m in layers)
    return False


def resolve_clipping(model: nn.Module, clipping: str) -> str:
    """The mode to use: ``clipping`` itself (refused if it does not support a layer), or for ``auto`` the first
    of :data:`AUTO_ORDER` that supports every layer."""
    check_choice("clipping", clipping, CLIPPING)
    if clipping == "auto":
        return next(m for m in AUTO_ORDER if supports(model, m))
    if not supports(model, clipping):
        names = sorted({type(m).__name__ for m in _trainable_leaves(model)})
        raise ValueError(f"clipping {clipping!r} does not support every layer of the model ({', '.join(names)}); "
                         "use clipping: auto")
    return clipping
