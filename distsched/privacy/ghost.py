"""Ghost clipping with the memory of non-private training: Opacus' fast gradient clipping, less its copies.

Opacus' ghost clipping (``DPLossFastGradientClipping`` + ``DPOptimizerFastGradientClipping``) runs two
backward passes: the first only for the per-example norms its module hooks compute, the second on the loss
reweighted by ``min(1, C / ||g_i||)``. Measured with torch's profiler on the embedding LM of
``benchmarks/privacy_step_time.py`` (batch 64), its peak of live tensor memory during a step is 2.9x that of
a non-private step. The extra copies, each the size of the model's gradients:

1. the first pass accumulates every parameter gradient, which is thrown away (zeroed) before the second;
   the second pass then adds into the kept buffers (``p.grad += g``), a transient per layer;
2. ``accumulate`` deep-copies ``p.grad`` into ``p.summed_grad`` (both live until the next ``zero_grad``);
3. ``add_noise`` allocates a zero tensor and the noise (two per parameter) and then ``summed + noise``.

:class:`GhostDPOptimizer` removes them: :func:`drop_first_pass_grads` frees each gradient of the first pass as
soon as it is accumulated (a post-accumulate-grad hook; the norms come from the module hooks, not from
``p.grad``), ``accumulate`` moves ``p.grad`` into ``p.summed_grad`` instead of copying it, and the noise is
drawn in chunks of :data:`NOISE_CHUNK` elements added in place. The step is the same: without
``secure_mode`` the noise is bit-identical to Opacus' (torch's normal sampler fills a tensor in blocks of 16
from one stream, so chunks of a multiple of 16 draw the same values); with ``secure_mode`` each element is
still the sum of four Gaussian draws halved (Holohan & Braghin 2021), drawn chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

#: elements of noise drawn at once (a multiple of 16: see the module docstring); 256 KiB of float32.
NOISE_CHUNK = 1 << 16


def add_noise_in_place(target: torch.Tensor, std: float, generator: torch.Generator | None,
                       secure_mode: bool) -> None:
    """``target += N(0, std^2)`` elementwise, drawn in chunks of :data:`NOISE_CHUNK` (the values Opacus'
    ``_generate_noise`` draws without ``secure_mode``; with it, ``(n_1 + n_2 + n_3 + n_4) / 2`` per element
    after one discarded draw, as Opacus does)."""
    if std == 0:
        return
    flat = target.view(-1)  # grads from autograd are contiguous; view fails loudly otherwise
    if secure_mode:  # Opacus discards the first draw
        torch.normal(mean=0, std=std, size=(1, 1), device=target.device, generator=generator)
    for start in range(0, flat.numel(), NOISE_CHUNK):
        n = min(NOISE_CHUNK, flat.numel() - start)
        if not secure_mode:
            flat[start : start + n] += torch.normal(mean=0, std=std, size=(n,), device=target.device,
                                                    generator=generator)
            continue
        chunk = torch.zeros(n, device=target.device, dtype=target.dtype)
        for _ in range(4):
            chunk += torch.normal(mean=0, std=std, size=(n,), device=target.device, generator=generator)
        flat[start : start + n] += chunk / 2


class GhostDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' ``DPOptimizerFastGradientClipping`` that moves the clipped gradient into ``summed_grad`` and
    adds the noise in place (same step, without two gradient-sized copies; see the module docstring)."""

    def accumulate(self) -> None:
        """``summed_grad += grad`` (the first time: ``summed_grad = grad``, moved, not copied)."""
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad.data)
            else:
                p.summed_grad, p.grad = p.grad.data, None

    def add_noise(self) -> None:
        """``p.grad = summed_grad + N(0, (sigma C)^2)``, the noise added in place into ``summed_grad``."""
        sigma = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            add_noise_in_place(p.summed_grad, sigma * self.max_grad_norm, self.generator, self.secure_mode)
            p.grad = p.summed_grad.view_as(p)  # a view: the processed flag stays on summed_grad
            _mark_as_processed(p.summed_grad)


def drop_first_pass_grads(module: nn.Module, in_first_pass: Callable[[], bool]) -> list[object]:
    """On every trainable parameter of ``module``, a post-accumulate-grad hook that frees ``p.grad`` while
    ``in_first_pass()`` is true (ghost clipping's first backward pass needs only the norms its module hooks
    compute; Opacus zeroes those gradients before the second pass anyway). Returns the hook handles."""

    def drop(p: torch.Tensor) -> None:
        if in_first_pass():
            p.grad = None

    return [p.register_post_accumulate_grad_hook(drop) for p in module.parameters() if p.requires_grad]
