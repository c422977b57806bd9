"""Ghost clipping (``privacy/ghost.py``) on models built to break it, against an independent reference: each
example's gradient by autograd (``torch.autograd.grad`` of ``l_i`` on the same batch, same dropout masks),
clipped jointly over every trainable parameter, ``sum_i min(1, C / (||g_i|| + 1e-6)) g_i``. A case ghost cannot
compute exactly must be refused in one line, never clipped short or left unclipped."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from distsched.privacy import private_training
from distsched.privacy.clipping import resolve_clipping
from distsched.privacy.engine import _clipping_mode
from distsched.privacy.ghost import GhostModule
from distsched.privacy.ghost_norms import CANCELLATION

warnings.filterwarnings("ignore", message="Full backward hook")
V, T, B, D, C = 11, 6, 5, 8, 0.05


def _gamma(n):
    """Higham's ``gamma_n = n u / (1 - n u)`` for float32 (``u = 2^-24``)."""
    return n * 2.0**-24 / (1 - n * 2.0**-24)


def _capture_linears(model):
    """Forward hooks keeping each Linear call's input and, per autograd call, its output gradient."""
    seen = {}

    def keep(m, inp, out):
        rec = (inp[0].detach(), [])
        seen.setdefault(m, []).append(rec)
        out.register_hook(lambda g: rec[1].append(g.detach()))

    handles = [m.register_forward_hook(keep) for m in model.modules() if type(m) is nn.Linear]
    return seen, handles


def _rounding_bounds(model, seen, b):
    """{weight: e_i} for each Linear ghost computes in closed form (one call, weight unshared): the bound on the
    rounding of its float32 clipped sum over ``n = B T`` rows, ``e_i = gamma_{n+3} S_i``, ``S_i = sum_t ||g_t||
    ||a_t||`` (plus ``gamma_T S_i`` where its norm is a float32 per-example gradient), from the captured
    activations and per-example output gradients (``ghost_norms.linear_norms``)."""
    owners = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[p] = owners.get(p, 0) + 1
    out = {}
    for m, calls in seen.items():
        if len(calls) != 1 or not m.weight.requires_grad or owners[m.weight] > 1:
            continue
        a, gs = calls[0]
        assert len(gs) == b
        d_in, d_out = m.in_features, m.out_features
        a3 = a.double().reshape(b, -1, d_in)
        g3 = torch.stack([gs[i][i] for i in range(b)]).double().reshape(b, -1, d_out)
        t = a3.shape[1]
        mags = (a3.norm(dim=2) * g3.norm(dim=2)).sum(1)
        e = _gamma(b * t + 3) * mags
        if t > 1 and t * (d_in + d_out) > d_in * d_out:
            e = e + _gamma(t) * mags
        out[m.weight] = e
    return out


def _reference(model, inputs, loss, seed=0):
    """``sum_i c_i g_i`` and ``||g_i||``, ``g_i`` from one autograd call per example (jointly over all params),
    ``c_i = min(1, C / (N_i + 1e-6))`` with ``N_i^2 = sum_l (||g_{i,l}|| + e_{i,l})^2``, ``e_{i,l}`` the
    documented bound on the float32 rounding of ghost's batched Linear sums (:func:`_rounding_bounds`; 0 for
    every other parameter), so that ghost's clip factor is matched to float rounding, not to that bound."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    seen, handles = _capture_linears(model)
    torch.manual_seed(seed)
    per_example = loss(model, *inputs)
    grads = [torch.autograd.grad(per_example[i], params, retain_graph=True, allow_unused=True)
             for i in range(len(per_example))]
    for h in handles:
        h.remove()
    bounds = _rounding_bounds(model, seen, len(per_example))
    grads = [[torch.zeros_like(p) if g is None else g.double() for g, p in zip(gs, params)] for gs in grads]
    norms = torch.stack([torch.sqrt(sum(g.square().sum() for g in gs)) for gs in grads])
    clip_norms = torch.stack([torch.sqrt(sum((g.norm() + (bounds[p][i] if p in bounds else 0)).square()
                                             for g, p in zip(gs, params))) for i, gs in enumerate(grads)])
    coef = (C / (clip_norms + 1e-6)).clamp(max=1)
    return [sum(c * gs[k] for c, gs in zip(coef, grads)) for k in range(len(params))], norms, clip_norms


def _ghost(model, inputs, loss, seed=0):
    model = copy.deepcopy(model)
    gm = GhostModule(model, max_grad_norm=C)
    torch.manual_seed(seed)
    gm.backward(loss(gm, *inputs))
    return [p.grad.double() for p in model.parameters() if p.requires_grad], gm


def _assert_exact(model, inputs, loss, seed=0):
    want, norms, clip_norms = _reference(model, inputs, loss, seed)
    got, gm = _ghost(model, inputs, loss, seed)
    assert float(norms.max()) > C  # some example is clipped
    torch.testing.assert_close(gm.per_sample_gradient_norms.double(), clip_norms, rtol=1e-5, atol=1e-7)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)


def _tokens(seed=0, b=B, t=T):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, t), generator=g), torch.randint(0, V, (b, t), generator=g)


def _lm_loss(model, x, y):
    return F.cross_entropy(model(x).transpose(1, 2), y, reduction="none").mean(1)


def _cls_loss(model, x, y):
    return F.cross_entropy(model(x), y, reduction="none")


class TiedLM(nn.Module):
    """An Embedding whose weight is also the output Linear's (``head.weight = emb.weight``)."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(V, D), nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(self.emb(x)))


class Recurrent(nn.Module):
    """One Linear and one LayerNorm applied twice in a forward (a recurrent loop)."""

    def __init__(self):
        super().__init__()
        self.inp, self.cell, self.ln, self.out = nn.Linear(4, D), nn.Linear(D, D), nn.LayerNorm(D), nn.Linear(D, 3)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for _ in range(2):
            h = self.ln(torch.tanh(self.cell(h)))
        return self.out(h)


def _classes(seed=1):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(B, 4, generator=g), torch.randint(0, 3, (B,), generator=g)


def test_tied_weights_and_reused_layers_clip_the_norm_of_the_sum_over_uses():
    """A parameter shared by two layers, a layer called twice, a model called twice for one loss: the
    per-example norm is that of the gradient summed over every use (Opacus' ghost clipping refuses these;
    here they take the per-example-gradient path), equal to autograd's."""
    torch.manual_seed(0)
    _assert_exact(TiedLM(), _tokens(), _lm_loss)
    torch.manual_seed(0)
    _assert_exact(Recurrent(), _classes(), _cls_loss)
    torch.manual_seed(0)
    pair = nn.Sequential(nn.Linear(4, D), nn.Tanh(), nn.Linear(D, 2))
    x1, x2 = _classes(2)[0], _classes(3)[0]
    _assert_exact(pair, (x1, x2), lambda m, a, b: (m(a) - m(b)).square().sum(1))  # a contrastive loss


def test_a_parameter_used_outside_a_call_of_its_layer_is_refused():
    """``F.linear(h, emb.weight)`` (a functional tie) or ``x + pos.weight``: the hooks see only layer calls,
    so that use's gradient would be dropped from the norm and the sum. Refused in one line."""

    class FunctionalTie(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.ln = nn.Embedding(V, D), nn.LayerNorm(D)

        def forward(self, x):
            return F.linear(self.ln(self.emb(x)), self.emb.weight)

    class PositionsByWeight(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.pos, self.head = nn.Embedding(V, D), nn.Embedding(T, D), nn.Linear(D, V)

        def forward(self, x):
            return self.head(self.emb(x) + self.pos.weight[: x.shape[1]])

    for model in (FunctionalTie(), PositionsByWeight()):
        assert resolve_clipping(model, "auto") == "ghost"
        with pytest.raises(RuntimeError, match="used outside a call of its layer") as err:
            _ghost(model, _tokens(), _lm_loss)
        assert "\n" not in str(err.value)


def test_a_parameter_made_trainable_after_wrapping_is_refused_not_stepped_unclipped():
    """Unfreezing a layer after make_private: autograd gives it its raw gradient (here ~200x C), which the
    optimizer must not noise and apply as if clipped (Opacus' hooks refuse it too). Nothing is stepped or
    charged."""
    torch.manual_seed(0)
    x, y = 50 * torch.randn(16, 6), torch.randint(0, 2, (16,))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=1.0), sample_rate=0.1,
                          expected_batch_size=16, max_grad_norm=C, delta=1e-5, noise=1.0, clipping="auto")
    assert pt.clipping == "ghost"
    model[0].requires_grad_(True)
    before = [p.detach().clone() for p in model.parameters()]
    pt.optimizer.zero_grad()
    pt.loss_fn(nn.CrossEntropyLoss())(pt.model(x.requires_grad_(True)), y).backward()
    assert float(model[0].weight.grad.norm()) > 10 * C  # the raw gradient is there
    with pytest.raises(RuntimeError, match="no clipped gradient"):
        pt.optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert pt.accountant.history == []


class Shapes(nn.Module):
    def __init__(self, padding_idx=None, max_norm=None, affine=True, bias=True):
        super().__init__()
        self.emb = nn.Embedding(V, D, padding_idx=padding_idx, max_norm=max_norm)
        self.ln = nn.LayerNorm(D, elementwise_affine=affine, bias=bias)
        self.head = nn.Linear(D, V)

    def forward(self, x):
        return self.head(self.ln(self.emb(x)))


def test_layer_norm_without_bias():
    """``nn.LayerNorm(bias=False)`` (Opacus' grad sampler fails on it: ``None.requires_grad``), alone and
    called twice (the per-example-gradient path)."""
    torch.manual_seed(0)
    _assert_exact(Shapes(bias=False), _tokens(), _lm_loss)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.head = nn.LayerNorm(4, bias=False), nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.ln(torch.tanh(self.ln(x))))

    torch.manual_seed(0)
    _assert_exact(Twice(), _classes(), _cls_loss)


def test_close_removes_ghost_hooks_and_a_stray_forward_does_not_poison_the_next_step():
    """``_close()`` removes GhostModule's own hooks (forward pre-hooks, post-accumulate-grad hooks) with
    Opacus'; a forward without backward (its activations kept by the hooks) is refused at that backward and
    forgotten after it, so the next step is exact again."""
    torch.manual_seed(0)
    model = Recurrent()
    gm = GhostModule(model, max_grad_norm=C)
    gm._close()
    assert not any(layer._forward_pre_hooks for layer in model.modules())
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, D), nn.Tanh(), nn.Linear(D, 3))
    x, y = _classes()
    gm = GhostModule(copy.deepcopy(model), max_grad_norm=C)
    gm(torch.randn(17, 4))  # a stray forward, in train mode with grad, never backpropagated
    with pytest.raises(RuntimeError, match="no per-example norm"):
        gm.backward(_cls_loss(gm, x, y))
    gm.backward(_cls_loss(gm, x, y))
    want, _, _ = _reference(model, (x, y), _cls_loss)
    for p, w in zip(gm._module.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad.double(), w, rtol=1e-5, atol=1e-8)


class Mixed(nn.Module):
    """Conv2d, GroupNorm, Conv1d (grad samplers), a dropout, a buffer, a frozen Linear bias, a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.conv1 = nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Conv1d(4, 4, 2)
        self.drop, self.head = nn.Dropout(0.3), nn.Linear(12, 3)
        self.register_buffer("scale", torch.tensor(2.0))
        self.head.bias.requires_grad_(False)

    def forward(self, x):
        h = torch.relu(self.gn(self.conv(x))).mean(3)
        return self.head(self.drop(torch.relu(self.conv1(h)).flatten(1) * self.scale))


@pytest.mark.parametrize("case", ["padding-idx", "max-norm", "duplicate-tokens", "no-affine", "batch-1",
                                  "long-sequence", "frozen-embedding", "linear-4d", "conv-groupnorm-dropout"])
def test_held_cases_equal_autograd_per_example_clipping(case):
    """Cases the review found exact (kept as regressions): Embedding with ``padding_idx``, ``max_norm``, one
    token repeated; LayerNorm without affine; a batch of 1; a sequence long enough for the per-example (not
    Gram) Linear norm; a frozen first layer; a 4-D Linear input; grad-sampler layers with dropout."""
    torch.manual_seed(0)
    x, y = _tokens()
    if case == "padding-idx":
        x[:, ::2] = 0
        _assert_exact(Shapes(padding_idx=0), (x, y), _lm_loss)
    elif case == "max-norm":
        _assert_exact(Shapes(max_norm=0.5), (x, y), _lm_loss)
    elif case == "duplicate-tokens":
        _assert_exact(Shapes(), (torch.full((B, T), 3), y), _lm_loss)
    elif case == "no-affine":
        _assert_exact(Shapes(affine=False), (x, y), _lm_loss)
    elif case == "batch-1":
        _assert_exact(Shapes(), (x[:1], y[:1]), _lm_loss)
    elif case == "long-sequence":
        _assert_exact(Shapes(), _tokens(b=3, t=200), _lm_loss)
    elif case == "frozen-embedding":
        model = Shapes()
        model.emb.requires_grad_(False)
        _assert_exact(model, (x, y), _lm_loss)
    elif case == "linear-4d":
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        xs = 3 * torch.randn(B, 2, 3, 4, generator=torch.Generator().manual_seed(5))
        _assert_exact(model, (xs,), lambda m, v: m(v).square().mean((1, 2, 3)))
    else:
        xi = 3 * torch.randn(B, 1, 6, 6, generator=torch.Generator().manual_seed(5))
        _assert_exact(Mixed(), (xi, _classes()[1]), _cls_loss, seed=4)


def test_auto_never_picks_ghost_where_it_is_refused():
    """Group mode and per-layer clipping: ``auto`` takes hooks on a model ghost supports; ghost is refused."""
    model = Shapes()
    assert resolve_clipping(model, "auto") == "ghost"
    assert _clipping_mode(model, "auto", "group", per_layer=False) == "hooks"
    assert _clipping_mode(model, "auto", "single", per_layer=True) == "hooks"
    assert _clipping_mode(model, "auto", "local", per_layer=False) == "ghost"
    with pytest.raises(ValueError, match="not available in group mode"):
        _clipping_mode(model, "ghost", "group", per_layer=False)


@pytest.mark.parametrize(("t", "scale", "bias"), [(2, 1e4, False), (2, 1e10, True), (16, 1e15, False),
                                                    (9, 1e6, False)])
def test_an_example_whose_positions_cancel_is_still_clipped_to_c(t, scale, bias):
    """One example with an input ``M u`` at one position and ``-M u + v`` at another: its weight gradient
    ``g (a_1 + a_2)^T`` is moderate, but the float32 Gram norm ``<G G^T, A A^T>`` cancels terms of size
    ``M^2`` and came out 0 (the example went unclipped: a contribution of 66 for C = 0.05 at M = 1e4), and the
    batched product's rounding, relative to ``M``, leaked past C in the per-example-norm path too (1.0045 C).
    Its contribution to the clipped sum (the sum with it minus the sum without it) is at most C."""
    d_in = d_out = 64 if t < 9 else 4  # t = 9 at 4 x 4: the per-example-gradient norm path
    torch.manual_seed(0)
    layer = nn.Linear(d_in, d_out, bias=bias)
    w = torch.randn(1, 1, d_out)
    u, v = torch.randn(d_in), torch.randn(d_in)
    x = torch.randn(4, t, d_in)
    x[0, 0], x[0, 1] = scale * u, -scale * u + v
    sums = []
    for batch in (x, x[1:]):
        gm = GhostModule(copy.deepcopy(layer), max_grad_norm=C)
        gm.backward((gm(batch) * w).sum((1, 2)))
        sums.append(torch.cat([p.grad.double().flatten() for p in gm._module.parameters()]))
        assert bool(gm.per_sample_gradient_norms.isfinite().all())
    assert float((sums[0] - sums[1]).norm()) <= C * (1 + 1e-5)


def test_an_embedding_example_whose_equal_tokens_cancel_is_still_clipped_to_c():
    """Token 3 twice in example 0 with output gradients ``M u`` and ``-M u + v``, and the other examples' large
    gradients on row 3 too: the clipped sum added ``c_i g_t`` into row 3 across examples, rounding relative
    to ``M`` (example 0's contribution: 1.012 C at M = 1e8); now each example's summed rows (what its norm
    is of) are scaled and added. Its contribution is at most C."""
    torch.manual_seed(0)
    emb = nn.Embedding(5, 16)
    x = torch.randint(0, 5, (6, 4))
    x[:, :2] = 3
    u, v = torch.randn(16), torch.randn(16)
    w = torch.randn(6, 4, 16)
    w[0, 0], w[0, 1] = 1e8 * u, -1e8 * u + v
    w[1:, :2] = 1e8 * torch.randn(5, 2, 16)
    sums = []
    for keep in (slice(0, 6), slice(1, 6)):
        gm = GhostModule(copy.deepcopy(emb), max_grad_norm=0.01)
        gm.backward((gm(x[keep]) * w[keep]).sum((1, 2)))
        sums.append(gm._module.weight.grad.double())
    assert float((sums[0] - sums[1]).norm()) <= 0.01 * (1 + 1e-5)


def test_a_sum_reduced_loss_is_refused_in_one_line():
    """Ghost's loss wrapper assumes ``reduction='mean'`` (the optimizer divides by the expected batch size):
    a ``sum`` loss is a ``ValueError`` naming it (was Opacus' bare ``AssertionError``)."""
    model = nn.Sequential(nn.Linear(4, 3))
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=0.1), sample_rate=0.1,
                          expected_batch_size=4, max_grad_norm=C, delta=1e-5, noise=1.0, clipping="ghost")
    with pytest.raises(ValueError, match="reduction='mean'.*got reduction='sum'"):
        pt.loss_fn(nn.CrossEntropyLoss(reduction="sum"))
    pt.loss_fn(nn.CrossEntropyLoss())


def test_a_tie_made_after_wrapping_is_still_the_norm_of_the_sum():
    """``head.weight = emb.weight`` after the model is wrapped: the per-example norm still covers both uses
    (Opacus' forward counters, read before the backward pass), equal to autograd's."""
    torch.manual_seed(0)
    model = TiedLM()
    model.head.weight = nn.Parameter(torch.randn(V, D))  # untied when wrapped
    tied = copy.deepcopy(model)
    tied.head.weight = tied.emb.weight
    x, y = _tokens()
    want, _, norms = _reference(tied, (x, y), _lm_loss)
    gm = GhostModule(model, max_grad_norm=C)
    model.head.weight = model.emb.weight
    gm.backward(_lm_loss(gm, x, y))
    torch.testing.assert_close(gm.per_sample_gradient_norms.double(), norms, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.emb.weight.grad.double(), want[0], rtol=1e-5, atol=1e-8)


def test_the_rounding_of_the_batched_float32_sum_is_inside_c():
    """An example just below the cancellation threshold (positions ``M u`` and ``-M u + v`` with the same output
    gradient, ``S_0 = 99 ||g_0||``) in a batch of ``n = 64 x 64 = 4096`` rows: the float32 product ``(c G)^T A``
    rounds its terms by up to ``gamma_{n+2} c_0 S_0``, 0.024 C. Clipped by ``||g_0||`` alone its measured
    contribution (the clipped sum minus that with example 0 zeroed, in float64) was 1.00000016 C here
    and its worst case was 1.024 C; clipped by ``||g_0|| + gamma_{n+3} S_0`` both are at most C, and a natural
    example's clip factor is smaller than the exact one by at most that bound."""
    torch.manual_seed(0)
    b, t, d = 64, 64, 64
    layer = nn.Linear(d, d, bias=False)
    x, w = torch.randn(b, t, d), torch.randn(b, t, d)
    u, v, g0 = (z / z.norm() for z in torch.randn(3, d))
    x[0], w[0] = 0, 0
    x[0, 0], x[0, 1] = 49.5 * u, -49.5 * u + v
    w[0, 0] = w[0, 1] = 1e3 * g0  # ||g_0|| = 1e3: the 1e-6 in C / (||g_0|| + 1e-6) is no margin
    sums, coefs = [], []
    for zero in (False, True):
        xs, ws = x.clone(), w.clone()
        if zero:
            xs[0], ws[0] = 0, 0
        gm = GhostModule(copy.deepcopy(layer), max_grad_norm=C)
        gm.backward((gm(xs) * ws).sum((1, 2)))
        sums.append(gm._module.weight.grad.double())
        coefs.append(gm.get_clipping_coef().double())
    x64, w64 = x.double(), w.double()
    grads = torch.einsum("btj,btk->bjk", w64, x64)  # exact per-example gradients (float64)
    norms = grads.flatten(1).norm(dim=1)
    mags = (w64.norm(dim=2) * x64.norm(dim=2)).sum(1)
    bound = _gamma(b * t + 2) * mags  # the float32 product's rounding of example i's terms
    assert 98 < float(mags[0] / norms[0]) < CANCELLATION  # in the batched product, not on its own path
    assert float((sums[0] - sums[1]).norm()) <= C  # measured
    assert float(coefs[0][0] * (norms[0] + bound[0])) <= C  # worst case
    exact = (C / (norms + 1e-6)).clamp(max=1)
    assert bool((coefs[0][1:] <= exact[1:] * (1 + 1e-6)).all())
    # T (d_in + d_out) > d_in d_out: its norm is of a float32 per-example gradient, gamma_T S_i added too
    clip_norms = norms + (_gamma(b * t + 3) + _gamma(t)) * mags
    assert bool((coefs[0][1:] >= C / (clip_norms[1:] + 1e-6) * (1 - 1e-6)).all())
