"""Per-example gradient norms and clipped gradient sums of the layers ghost clipping handles without a second
backward pass: ``nn.Linear``, ``nn.Embedding``, ``nn.LayerNorm``.

Each layer kind is a pair of functions of the layer's input ``a`` and the gradient of the per-example loss at
its output ``g`` (Opacus' "activations" and "backprops", the batch first, ``g`` already rescaled to the
per-example loss ``l_i``):

* ``norms(layer, a, g) -> ({param: ||d l_i / d param||, shape (B,)}, state)``;
* ``clipped(layer, state, c) -> {param: sum_i c_i d l_i / d param}``, the clipped sum, from the ``state``
  kept since the backward pass (the book-keeping of Bu et al. 2023, "Differentially private optimization on
  large model at small cost", ICML: no second backward pass through the model).

Formulas, per example ``i`` with positions ``t`` (``T`` positions, ``d_in`` -> ``d_out``):

* Linear weight: ``||sum_t g_t a_t^T||_F^2 = <G G^T, A A^T>`` (``T x T`` Gram matrices; Li et al. 2022,
  "Large language models can be strong differentially private learners") when ``T (d_in + d_out) <=
  d_in d_out``, else the per-example gradient itself (the "mixed ghost norm" of Bu et al. 2022, "Scalable
  and efficient training of large convolutional neural networks with differential privacy"); bias:
  ``||sum_t g_t||``. Clipped sum: ``(c G)^T A`` over every position of the batch, one matrix product.
* Embedding: the per-example gradient is ``sum_t e_{x_t} g_t^T``, so its squared norm sums, over the
  distinct tokens ``v`` of the example, ``||sum_{t: x_t = v} g_t||^2`` (Opacus' embedding norm sampler,
  Bu et al. NeurIPS 2023, here with one-dimensional keys ``i V + v`` instead of ``torch.unique(dim=0)``).
  Positions holding ``padding_idx`` get no gradient, as in torch. Clipped sum: ``index_add`` of ``c_i`` times
  each example's summed rows (the tensor its norm is of).
* LayerNorm: the per-example gradient is small (``d`` values): weight ``sum_t xhat_t * g_t`` with ``xhat``
  the normalized input, bias ``sum_t g_t`` (Opacus' LayerNorm grad sampler); it is kept for the clipped
  sum ``sum_i c_i grad_i``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

Norms = dict[nn.Parameter, torch.Tensor]
#: ``norms(layer, activations, backprops) -> (per-example norms, state)``.
NormFn = Callable[[Any, list[torch.Tensor], torch.Tensor], tuple[Norms, Any]]
#: ``clipped(layer, state, coef) -> {param: clipped sum}``.
ClippedFn = Callable[[Any, Any, torch.Tensor], Norms]


def _per_example(coef: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``c_i t_i`` for ``t`` with the batch first."""
    return t * coef.to(t.dtype).view(-1, *([1] * (t.dim() - 1)))


#: an example whose positions' terms sum to less than ``1 / CANCELLATION`` of their magnitudes,
#: ``||sum_t g_t a_t^T|| < sum_t ||g_t|| ||a_t|| / CANCELLATION``, gets its own per-example weight gradient (see
#: :func:`linear_norms`).
CANCELLATION = 100.0


def _gram64(x: torch.Tensor, columns: int = 128) -> torch.Tensor:
    """``x x^T`` per example in float64, summed over blocks of ``columns`` features (a float64 copy of one
    block at a time, not of ``x``)."""
    gram = x.new_zeros(x.shape[0], x.shape[1], x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[-1], columns):
        block = x[..., start : start + columns].double()
        gram.baddbmm_(block, block.transpose(1, 2))
    return gram


def gamma(n: int, dtype: torch.dtype) -> float:
    """``gamma_n = n u / (1 - n u)``, ``u`` the unit roundoff of ``dtype``: a sum of ``n`` products computed in
    ``dtype`` (any order) equals the exact sum with each term ``x_r`` perturbed to ``x_r (1 + theta_r)``,
    ``|theta_r| <= gamma_n`` (Higham, "Accuracy and stability of numerical algorithms", 2002, Lemma 3.1 and
    section 3.1)."""
    nu = n * torch.finfo(dtype).eps / 2
    return nu / (1 - nu)


def linear_norms(layer: nn.Linear, activations: list[torch.Tensor], backprops: torch.Tensor) -> tuple[Norms, Any]:
    """Per-example gradient norms of a Linear layer (ghost norm or per-example gradient, the cheaper), weight
    norms plus the rounding bound of the batched clipped sum.

    Rounding: the Gram norm's error is absolute in ``S_i^2``, ``S_i = sum_t ||g_t|| ||a_t||``, not relative to
    the norm; positions whose terms cancel (an input ``M u`` at one position and ``-M u + v`` at another) made
    it round to 0 in float32, so that example went unclipped. The Gram norm is computed in float64 plus its
    error bound ``(T^2 + d_in + d_out) 2^-53 S_i^2`` (never below the exact norm), and an example with
    ``S_i > CANCELLATION ||grad_i||`` gets its per-example gradient, its norm and its clipped term from that
    one tensor (as Opacus' hooks), out of the batched product whose rounding is relative to ``S_i``.

    The batched product ``(c G)^T A`` is a float32 sum over its ``n = B T`` rows: by :func:`gamma` it is the
    exact sum of each example's terms perturbed, and example ``i``'s perturbation is at most ``gamma_{n+2} c_i
    |g_t| |a_t|^T`` entrywise (``+2``: the product by ``c_i`` and the sum with the per-example terms), of
    Frobenius norm ``<= gamma_{n+2} c_i S_i``. Just below the cancellation threshold that is ``0.024 C`` at
    ``n = 4096``. The weight norm reported (and clipped by) is ``||grad_i|| + gamma_{n+3} S_i`` (``+1``: the
    norm's own rounding to float32, ``<= u ||grad_i|| <= u S_i``): then
    ``c_i = min(1, C / ||(norm_l)_l||)`` over the layers keeps each example's computed contribution, layer by
    layer ``<= c_i norm_l`` (triangle inequality), at most ``C`` jointly. In the per-example-gradient norm path
    the norm is of a float32 ``bmm`` (a sum over ``T``), so ``gamma_T S_i`` is added too. An example on its own
    per-example gradient is clipped by the norm of the tensor added: no bound added."""
    g = backprops
    a = activations[0].to(g.dtype)
    b, d_in, d_out = g.shape[0], a.shape[-1], g.shape[-1]
    a3, g3 = a.reshape(b, -1, d_in), g.reshape(b, -1, d_out)
    t = a3.shape[1]
    out: Norms = {}
    own: tuple[torch.Tensor, torch.Tensor] | None = None  # (examples, their per-example weight gradients)
    if layer.weight.requires_grad:
        if t == 1:  # ||g|| ||a||: no cancellation
            norm = g3.square().sum((1, 2)).sqrt() * a3.square().sum((1, 2)).sqrt()
            norm = norm * (1 + gamma(b + 3, g.dtype))  # S_i = ||grad_i||: the product's bound is relative
        else:
            mags = (g3.norm(dim=2).double() * a3.norm(dim=2).double()).sum(1)  # S_i
            if t * (d_in + d_out) <= d_in * d_out:  # Gram matrices: O(T^2 (d_in + d_out))
                sq = torch.linalg.vecdot(_gram64(g3).reshape(b, -1), _gram64(a3).reshape(b, -1))
                norm = (sq + (t * t + d_in + d_out) * 2.0**-53 * mags.square()).clamp(min=0).sqrt()
            else:  # the per-example gradient: O(T d_in d_out)
                norm = torch.bmm(g3.transpose(1, 2), a3).square().sum((1, 2)).sqrt().double()
            idx = (mags > CANCELLATION * norm).nonzero().flatten()
            if t * (d_in + d_out) > d_in * d_out:  # the norm of a float32 sum over T positions
                norm = norm + gamma(t, g.dtype) * mags
            norm = (norm + gamma(b * t + 3, g.dtype) * mags).to(g.dtype)
            if len(idx):
                grads = torch.bmm(g3[idx].transpose(1, 2), a3[idx])
                norm[idx] = grads.reshape(len(idx), -1).norm(dim=1)
                own = (idx, grads)
        out[layer.weight] = norm
    g_sum = None
    if layer.bias is not None and layer.bias.requires_grad:
        g_sum = g3.sum(1)  # the per-example bias gradients, (B, d_out)
        out[layer.bias] = g_sum.norm(dim=1)
    return out, (a, g, g_sum, own)


def linear_clipped(layer: nn.Linear, state: Any, coef: torch.Tensor) -> Norms:
    """``sum_i c_i grad_i`` of a Linear layer: ``(c G)^T A`` over every position (``c`` on the narrower of
    ``G`` and ``A``), plus ``c_i grad_i`` of the examples with their own per-example gradient (0 in the
    product); bias ``c^T (sum_t g_t)``."""
    a, g, g_sum, own = state
    out: Norms = {}
    if layer.weight.requires_grad:
        batched = coef
        if own is not None:
            batched = coef.clone()
            batched[own[0]] = 0
        if g.shape[-1] <= a.shape[-1]:
            g2, a2 = _per_example(batched, g).reshape(-1, g.shape[-1]), a.reshape(-1, a.shape[-1])
        else:
            g2, a2 = g.reshape(-1, g.shape[-1]), _per_example(batched, a).reshape(-1, a.shape[-1])
        weight = g2.t() @ a2
        if own is not None:
            weight = weight + torch.einsum("n,n...->...", coef[own[0]].to(own[1].dtype), own[1])
        out[layer.weight] = weight.to(layer.weight.dtype)
    if g_sum is not None:
        out[layer.bias] = (coef.to(g_sum.dtype) @ g_sum).to(layer.bias.dtype)
    return out


def _embedding_grads(layer: nn.Embedding, activations: list[torch.Tensor], backprops: torch.Tensor):
    ids = activations[0].reshape(backprops.shape[0], -1).long()
    g = backprops.reshape(ids.shape[0], ids.shape[1], -1)
    if layer.padding_idx is not None:  # torch gives the padding row no gradient
        g = g.masked_fill((ids == layer.padding_idx).unsqueeze(-1), 0)
    return ids, g


def embedding_norms(layer: nn.Embedding, activations: list[torch.Tensor],
                    backprops: torch.Tensor) -> tuple[Norms, Any]:
    """Per-example gradient norms of an Embedding: gradients of equal tokens summed per example, O(B T d).
    The state is those per-example rows, so that each example's clipped term is the tensor its norm is of (an
    ``index_add`` of ``c_i g_t`` into rows shared across examples rounds relative to ``||g_t||``, not to the
    norm, when an example's equal tokens' gradients cancel)."""
    ids, g = _embedding_grads(layer, activations, backprops)
    out: Norms = {}
    state = None
    if layer.weight.requires_grad:
        b, d, vocab = ids.shape[0], g.shape[-1], layer.num_embeddings
        keys = (torch.arange(b, device=ids.device).unsqueeze(1) * vocab + ids).reshape(-1)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        summed = torch.zeros(len(uniq), d, dtype=g.dtype, device=g.device).index_add_(0, inverse, g.reshape(-1, d))
        sq = torch.zeros(b, dtype=g.dtype, device=g.device).index_add_(0, uniq // vocab, summed.square().sum(1))
        out[layer.weight] = sq.sqrt()
        state = (uniq // vocab, uniq % vocab, summed)
    return out, state


def embedding_clipped(layer: nn.Embedding, state: Any, coef: torch.Tensor) -> Norms:
    """``sum_i c_i grad_i`` of an Embedding: each example's row ``sum_{t: x_t = v} g_t`` times ``c_i``, added
    into row ``v``."""
    if state is None:
        return {}
    example, token, summed = state
    grad = torch.zeros(layer.num_embeddings, summed.shape[-1], dtype=summed.dtype, device=summed.device)
    grad.index_add_(0, token, summed * coef.to(summed.dtype)[example].unsqueeze(1))
    return {layer.weight: grad.to(layer.weight.dtype)}


def layer_norm_grads(layer: nn.LayerNorm, activations: list[torch.Tensor], backprops: torch.Tensor) -> Norms:
    """Per-example gradients of a LayerNorm: weight ``sum_t xhat_t * g_t``, bias ``sum_t g_t`` (Opacus'
    LayerNorm grad sampler, which fails on ``bias=False``; a frozen or absent parameter gets none)."""
    x, dims = activations[0], layer.weight.dim() if layer.weight is not None else 0
    over = tuple(range(1, backprops.dim() - dims))  # every dimension but the batch and the normalized ones
    out: Norms = {}
    if layer.weight is not None and layer.weight.requires_grad:
        xhat = F.layer_norm(x, layer.normalized_shape, eps=layer.eps)
        out[layer.weight] = (xhat * backprops).sum(over) if over else xhat * backprops
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = backprops.sum(over) if over else backprops
    return out


def layer_norm_norms(layer: nn.LayerNorm, activations: list[torch.Tensor],
                     backprops: torch.Tensor) -> tuple[Norms, Any]:
    """Per-example gradient norms of a LayerNorm, from its per-example gradients (kept: ``d`` values each)."""
    grads = layer_norm_grads(layer, activations, backprops)
    return {p: gs.reshape(len(gs), -1).norm(dim=1) for p, gs in grads.items()}, grads


def per_example_clipped(layer: nn.Module, state: Any, coef: torch.Tensor) -> Norms:
    """``sum_i c_i grad_i`` from kept per-example gradients ``{param: (B, *param.shape)}``."""
    return {p: torch.einsum("n,n...->...", coef.to(gs.dtype), gs) for p, gs in state.items()}


#: layer type -> (norms, clipped sum), by exact type as Opacus' registries.
LAYERS: dict[type[nn.Module], tuple[NormFn, ClippedFn]] = {
    nn.Linear: (linear_norms, linear_clipped),
    nn.Embedding: (embedding_norms, embedding_clipped),
    nn.LayerNorm: (layer_norm_norms, per_example_clipped),
}


def handles(layer: nn.Module) -> bool:
    """Whether ``layer``'s type is in :data:`LAYERS` and its options keep the formulas exact (an Embedding
    with ``scale_grad_by_freq`` or ``sparse`` gradients is not; it takes the per-example-gradient path)."""
    if type(layer) not in LAYERS:
        return False
    return not (isinstance(layer, nn.Embedding) and (layer.scale_grad_by_freq or layer.sparse))
