"""Ghost clipping with the memory of non-private training and one backward pass: Opacus' fast gradient
clipping, less its copies and its second backward pass.

One backward pass (:class:`GhostModule`, the book-keeping of Bu et al. 2023, "Differentially private
optimization on large model at small cost"): Opacus runs a second backward pass of the reweighted loss
``sum_i c_i l_i`` through the whole model; on the ``gpt`` transformer that pass took a third of the step
(torch's profiler: every input gradient, attention and GELU backward again). Here the backward hooks keep,
per layer, what its clipped sum needs (a Linear's input and output gradient, an Embedding's tokens and output
gradient, a LayerNorm's per-example gradients: :mod:`distsched.privacy.ghost_norms`; any other layer's
per-example gradients) and, once every norm is known, ``p.grad = sum_i c_i grad_i`` is computed from them,
one matrix product per Linear. Autograd is asked only for the gradients of the first layers' parameters
(``backward(inputs=...)``), so it skips the weight gradients the clipped sums replace. The step is Opacus'
up to float rounding and one documented margin: a Linear's clipped sum is one float32 product over all ``n =
B T`` rows, whose rounding perturbs example ``i``'s terms by up to ``gamma_{n+2} c_i S_i`` in norm (``S_i =
sum_t ||g_t|| ||a_t||``, ``gamma_n = n u / (1 - n u)``, ``u = 2^-24``, Higham), so its weight norm is
clipped as ``||grad_i|| + gamma_{n+3} S_i``: each example's computed contribution (the exact sum of its
rounded terms) is at most ``C``, where clipping by ``||grad_i||`` alone allowed 1.024 C for an example whose
positions cancel just below :data:`~distsched.privacy.ghost_norms.CANCELLATION` at ``n = 4096``. On other
data the clip factor is that much smaller than Opacus' (0.19% on random inputs at ``n = 4096``, ``S_i /
||grad_i|| ~ 8``). On ``gpt`` (batch 64, CPU) it took 0.79-0.91x the time of Opacus' hooks with float32
Gram norms, 1.07x since they are float64 (a rounding defect let an example escape clipping; 0.78x on
``gpt-wide``), the two-pass version 1.5-1.7x (BENCHMARKS.md).

Opacus' ghost clipping (``DPLossFastGradientClipping`` + ``DPOptimizerFastGradientClipping``) runs two
backward passes: the first only for the per-example norms its module hooks compute, the second on the loss
reweighted by ``min(1, C / ||g_i||)``. Measured with torch's profiler on the embedding LM of
``benchmarks/privacy_step_time.py`` (batch 64), its peak of live tensor memory during a step is 2.9x that of
a non-private step. The extra copies, each the size of the model's gradients:

1. the first pass accumulates every parameter gradient, which is thrown away (zeroed) before the second;
   the second pass then adds into the kept buffers (``p.grad += g``), a transient per layer;
2. ``accumulate`` deep-copies ``p.grad`` into ``p.summed_grad`` (both live until the next ``zero_grad``);
3. ``add_noise`` allocates a zero tensor and the noise (two per parameter) and then ``summed + noise``.

:class:`GhostDPOptimizer` and :class:`GhostModule` remove them: :func:`drop_first_pass_grads` frees each
gradient autograd still accumulates as soon as it is (a post-accumulate-grad hook; the norms come from the
module hooks, not from ``p.grad``), ``accumulate`` moves ``p.grad`` into ``p.summed_grad`` instead of
copying it, and the noise is drawn in chunks of :data:`NOISE_CHUNK` elements added in place. Without
``secure_mode`` the noise is bit-identical to Opacus' (torch's normal sampler fills a tensor in blocks of 16
from one stream, so chunks of a multiple of 16 draw the same values); with ``secure_mode`` each element is
still the sum of four Gaussian draws halved (Holohan & Braghin 2021), drawn chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.grad_sample.grad_sample_module import (
    GradSampleHooks,
    create_or_accumulate_grad_sample,
    promote_current_grad_sample,
)
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.module_utils import trainable_modules, trainable_parameters
from torch import nn

from distsched.privacy.ghost_norms import LAYERS, handles, layer_norm_grads, per_example_clipped

#: elements of noise drawn at once (a multiple of 16: see the module docstring); 256 KiB of float32.
NOISE_CHUNK = 1 << 16
#: the attribute :class:`GhostModule` sets on every gradient it made, a clipped sum; the optimizer takes no other.
CLIPPED = "_ghost_clipped_sum"


def mark_clipped(grad: torch.Tensor) -> torch.Tensor:
    """Mark ``grad`` as a clipped sum ``sum_i c_i grad_i`` (what :class:`GhostDPOptimizer` accepts); returns it."""
    setattr(grad, CLIPPED, True)
    return grad


def check_clipped(p: torch.Tensor) -> None:
    """Refuse a parameter whose ``.grad`` is not a clipped sum made by :class:`GhostModule` (autograd's raw
    gradient of a parameter made trainable after wrapping, or of one outside the wrapped model): the noise
    would cover only ``C`` of an unbounded contribution."""
    if p.grad is None or not getattr(p.grad, CLIPPED, False):
        raise RuntimeError(f"ghost clipping: a parameter of shape {tuple(p.shape)} in the optimizer has no clipped "
                           "gradient (trainable since make_private, or not in the model?); make it trainable "
                           "before make_private, or use clipping hooks")


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
        """``summed_grad += grad`` (the first time: ``summed_grad = grad``, moved, not copied); every ``grad``
        must be a clipped sum (:func:`check_clipped`)."""
        for p in self.params:
            check_clipped(p)
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
    ``in_first_pass()`` is true (the norms and the clipped sums of :class:`GhostModule` come from its module
    hooks, not from the unclipped gradient autograd accumulates). Returns the hook handles."""

    def drop(p: torch.Tensor) -> None:
        if in_first_pass():
            p.grad = None

    return [p.register_post_accumulate_grad_hook(drop) for p in module.parameters() if p.requires_grad]


#: per-example gradients distsched computes itself where Opacus' grad sampler fails (LayerNorm with ``bias=False``).
_GRADS = {nn.LayerNorm: layer_norm_grads}


def _requires_grad(values: tuple) -> bool:
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in values)


def _norm_only(norms):  # Opacus' norm-sampler signature, for its registry (parameter-tying check)
    return lambda layer, activations, backprops: norms(layer, activations, backprops)[0]


class GhostModule(GradSampleModuleFastGradientClipping):
    """Opacus' ``GradSampleModuleFastGradientClipping`` (ghost clipping) whose :meth:`backward` runs one
    backward pass: the hooks compute the per-example norms and keep what each layer's clipped sum needs,
    then ``p.grad = sum_i min(1, C / (N_i + 1e-6)) grad_i``, ``N_i`` the joint norm of the per-layer norms, a
    batched Linear weight's ``||grad_i|| + gamma_{n+3} S_i`` (its float32 product's rounding bound; see the
    module docstring), every other layer's ``||grad_i||``.

    A layer called more than once between backward passes (a recurrent loop, a model called twice for one loss)
    or sharing a parameter with another layer (tied embedding and output weights) takes the per-example-gradient
    path, summed over every use before the norm (Opacus' ghost clipping refuses these). Refused in one line: a
    parameter reaching the loss outside a call of its layer (``F.linear(h, emb.weight)``; :meth:`_check_uses`),
    and, by :class:`GhostDPOptimizer`, a gradient this module did not clip (a parameter made trainable after
    wrapping, or one outside the model)."""

    #: the ghost norms: Linear, Embedding, LayerNorm (:mod:`distsched.privacy.ghost_norms`); this class's own
    #: registry, Opacus' is left as it is.
    NORM_SAMPLERS = {t: _norm_only(fns[0]) for t, fns in LAYERS.items()}

    def __init__(self, m: nn.Module, *, max_grad_norm: float, **kwargs) -> None:
        super().__init__(m, max_grad_norm=max_grad_norm, use_ghost_clipping=True, **kwargs)
        self._kept: list[tuple[nn.Module, object, object, int]] = []  # (layer, clipped-sum fn, state, scale)
        self._called: dict[nn.Module, bool] = {}  # layer called since the last backward -> its input required grad
        self._calls: dict[nn.Module, int] = {}  # layer -> its calls since the last backward
        owners: dict[torch.Tensor, int] = {}
        for layer in self._module.modules():  # a parameter tied across layers: per-example gradients, summed
            for p in layer.parameters(recurse=False):
                owners[p] = owners.get(p, 0) + 1
        self._shared = {p for p, n in owners.items() if n > 1}
        self._reused: set[torch.Tensor] = set()  # used by more than one layer call in this forward (set per backward)
        self._user_input_grad = False
        self._in_backward = False
        hooks = [layer.register_forward_pre_hook(self._note_call) for _, layer in trainable_modules(self._module)]
        hooks += drop_first_pass_grads(self, lambda: self._in_backward)  # autograd's unclipped gradients: not needed
        self.autograd_grad_sample_hooks.extend(hooks)  # removed with Opacus' own (remove_hooks, _close)

    def _note_call(self, layer: nn.Module, inputs: tuple) -> None:
        if self.hooks_enabled and torch.is_grad_enabled():
            self._called[layer] = self._called.get(layer, False) or _requires_grad(inputs)
            self._calls[layer] = self._calls.get(layer, 0) + 1

    def capture_activations_hook(self, module: nn.Module, forward_input: list[torch.Tensor],
                                 _forward_output: torch.Tensor) -> None:
        """Opacus' (the input kept, each parameter's ``_forward_counter`` counted), without its refusal of a layer
        called twice or sharing a parameter: such a layer takes the per-example-gradient path (summed over its
        calls and its sharers before the norm) in :meth:`capture_backprops_hook`."""
        GradSampleHooks.capture_activations_hook(self, module, forward_input, _forward_output)

    def _closed_form(self, layer: nn.Module) -> bool:
        """Whether ``layer``'s norm and clipped sum come in closed form: a type :func:`handles`, called once in
        this forward, sharing no parameter (the norm of a sum over uses is not the closed form of one use)."""
        return (handles(layer) and self._calls.get(layer, 0) == 1
                and not any(p in self._shared or p in self._reused for p in layer.parameters(recurse=False)))

    def forward(self, *args, **kwargs):
        self._kept = []  # what an earlier forward left unused (the calls count until the backward)
        self._user_input_grad = (self._user_input_grad or _requires_grad(args)
                                 or _requires_grad(tuple(kwargs.values())))
        return super().forward(*args, **kwargs)

    def _backward_inputs(self) -> list[torch.Tensor] | None:
        """The tensors autograd must reach: the parameters of the layers whose input needs no gradient (the
        first layers). Every other layer sits between the loss and one of them, so its hook still fires, and
        autograd skips every weight gradient it would compute in vain (the clipped sums replace them). ``None``
        (every gradient) when an input of the model itself requires grad."""
        if self._user_input_grad:
            return None
        first = [p for layer, grad_in in self._called.items() if not grad_in
                 for p in layer.parameters(recurse=False) if p.requires_grad]
        return first or None

    def backward(self, loss_per_sample: torch.Tensor) -> None:
        """One backward pass of ``mean_i l_i`` (hooks on, autograd reaching only :meth:`_backward_inputs`),
        then ``p.grad = sum_i c_i grad_i`` for every trainable parameter (what Opacus' second pass of
        ``sum_i c_i l_i`` gives). A parameter of a layer the forward did not call gets norm 0 and gradient 0;
        one of a called layer whose norm is missing is an error."""
        if len(loss_per_sample) == 0:  # an empty Poisson batch: the clipped sum is 0 (the noise still comes)
            self._kept = []
            self._reset_calls()
            for p in self.trainable_parameters:
                p.grad = mark_clipped(torch.zeros_like(p))
            return
        for p in self.trainable_parameters:
            p._norm_sample = None
        # Opacus' forward hooks counted every use of each parameter: a tie made after wrapping counts too
        self._reused = {p for p in self.trainable_parameters if getattr(p, "_forward_counter", 0) > 1}
        self._in_backward = True
        try:
            self._check_uses(loss_per_sample)
            loss_per_sample.mean(dim=0).backward(inputs=self._backward_inputs())
        finally:
            self._in_backward = False
            called_layers = self._called
            self._reset_calls()
        called = {p for layer in called_layers for p in layer.parameters(recurse=False)}
        for p in self.trainable_parameters:
            if p._norm_sample is None and p in called:
                raise RuntimeError(f"ghost clipping: no per-example norm for a parameter of shape {tuple(p.shape)} "
                                   "(a layer whose output the loss does not use?); use clipping hooks")
            if p._norm_sample is None:
                p._norm_sample = loss_per_sample.new_zeros(len(loss_per_sample))
        coef = self.get_clipping_coef()
        kept, self._kept = self._kept, []
        for p in self.trainable_parameters:  # a layer not called: gradient 0 (the noise still goes on it)
            p.grad = None if p in called else torch.zeros_like(p)
        while kept:  # each layer's kept tensors freed as soon as its clipped sum is made
            layer, clipped, state, scale = kept.pop()
            for p, g in clipped(layer, state, coef * scale).items():
                p.grad = g if p.grad is None else p.grad + g
        for p in self.trainable_parameters:
            if p.grad is not None:
                mark_clipped(p.grad)

    def _reset_calls(self) -> None:
        """Forget the calls since the last backward, also what Opacus' hooks kept of a forward the backward did
        not reach (a forward without backward), so that one error or stray forward does not poison the next step."""
        self._called, self._calls, self._user_input_grad = {}, {}, False
        for _, layer in trainable_modules(self._module):
            if hasattr(layer, "activations"):
                layer.activations = []
            if hasattr(layer, "max_batch_len"):
                del layer.max_batch_len
            for p in layer.parameters(recurse=False):
                p._forward_counter, p.grad_sample = 0, None
                if hasattr(p, "_current_grad_sample"):
                    del p._current_grad_sample

    def _check_uses(self, loss_per_sample: torch.Tensor) -> None:
        """Refuse a trainable parameter that reaches the loss other than through a call of a layer owning it
        (``F.linear(h, self.emb.weight)``, ``x + self.pos.weight``): the hooks see only layer calls, so that use
        would be dropped from its norm and its gradient. Counts the autograd graph's edges into each
        parameter's ``AccumulateGrad`` node against the calls of its layers in this forward."""
        trainable = {p: 0 for p in self.trainable_parameters}
        for layer, n in self._calls.items():
            for p in layer.parameters(recurse=False):
                if p in trainable:
                    trainable[p] += n
        seen, stack = set(), [loss_per_sample.grad_fn]
        edges: dict[torch.Tensor, int] = {}
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            for nxt, _ in node.next_functions:
                var = getattr(nxt, "variable", None)
                if var is not None and var in trainable:
                    edges[var] = edges.get(var, 0) + 1
                elif nxt is not None:
                    stack.append(nxt)
        for p, n in edges.items():
            if n > trainable[p]:
                raise RuntimeError(f"ghost clipping: a parameter of shape {tuple(p.shape)} is used outside a call of "
                                   "its layer (e.g. F.linear(x, layer.weight)); its per-example gradient is not "
                                   "seen: call the layer instead (Opacus' hooks drop that use silently)")

    def capture_backprops_hook(self, module: nn.Module, _forward_input: torch.Tensor, forward_output: torch.Tensor,
                               loss_reduction: str, batch_first: bool) -> None:
        """Per-example norms into ``p._norm_sample`` (as Opacus'), and what the clipped sum needs kept."""
        if not self.hooks_enabled:
            return
        if self._closed_form(module):  # the backprops of the mean loss, unscaled: the factor B goes on the norms and c
            activations, backprops = self.rearrange_grad_samples(
                module=module, backprops=forward_output[0].detach(), loss_reduction="sum", batch_first=batch_first)
            scale = module.max_batch_len if loss_reduction == "mean" else 1
            norms, clipped = LAYERS[type(module)]
            found, state = norms(module, activations, backprops)
            for p, n in found.items():
                p._norm_sample = n * scale
                p._forward_counter -= 1
            self._kept.append((module, clipped, state, scale))
        else:  # per-example gradients (Opacus' grad sampler, else torch.func), summed over calls of the layer
            activations, backprops = self.rearrange_grad_samples(
                module=module, backprops=forward_output[0].detach(), loss_reduction=loss_reduction,
                batch_first=batch_first)
            sampler = _GRADS.get(type(module)) or self.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
            for p, gs in sampler(module, activations, backprops).items():
                create_or_accumulate_grad_sample(param=p, grad_sample=gs, max_batch_len=module.max_batch_len)
            done = {}
            for _, p in trainable_parameters(module):
                p._forward_counter -= 1
                if p._forward_counter == 0:
                    promote_current_grad_sample(p)
                    done[p], p.grad_sample = p.grad_sample, None
                    p._norm_sample = done[p].reshape(len(done[p]), -1).norm(dim=1)
            if done:
                self._kept.append((module, per_example_clipped, done, 1))
        if len(module.activations) == 0 and hasattr(module, "max_batch_len"):
            del module.max_batch_len
