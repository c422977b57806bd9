"""Ghost norms and clipped sums (``privacy/ghost_norms.py``) against per-example gradients computed
independently: Opacus' hooks (``GradSampleModule(...).grad_sample``) and ``torch.func`` (``vmap(grad)``)."""

from __future__ import annotations

import warnings

import pytest
import torch
from opacus import GradSampleModule
from torch import nn
from torch.func import functional_call, grad, vmap

from distsched.privacy.ghost_norms import LAYERS, handles

warnings.filterwarnings("ignore", message="Full backward hook")


def _opacus_grad_samples(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example gradients of ``l_i = <layer(x_i), w_i>`` by Opacus' hooks (``loss_reduction="sum"``)."""
    gsm = GradSampleModule(layer, loss_reduction="sum")
    (gsm(x) * w).sum().backward()
    out = {n: p.grad_sample.clone() for n, p in layer.named_parameters()}
    gsm._close()
    return out


def _func_grad_samples(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same per-example gradients by ``torch.func`` (one example at a time, vmapped)."""
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def loss(ps, xi, wi):
        return (functional_call(layer, ps, (xi.unsqueeze(0),))[0] * wi).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, w)


def _case(name: str) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    return {
        "linear-2d": (nn.Linear(5, 7), torch.randn(6, 5, generator=g)),
        "linear-gram": (nn.Linear(40, 30), torch.randn(6, 9, 40, generator=g)),       # T (d_in + d_out) <= d_in d_out
        "linear-per-example": (nn.Linear(3, 4), torch.randn(6, 9, 3, generator=g)),  # T (d_in + d_out) > d_in d_out
        "linear-4d": (nn.Linear(8, 6), torch.randn(6, 2, 3, 8, generator=g)),
        "linear-no-bias": (nn.Linear(5, 7, bias=False), torch.randn(6, 4, 5, generator=g)),
        "embedding": (nn.Embedding(5, 4), torch.randint(0, 5, (6, 11), generator=g)),  # tokens repeat
        "layer-norm": (nn.LayerNorm(6), 3 * torch.randn(6, 5, 6, generator=g) + 1),
    }[name]


def _linear_bound(layer: nn.Linear, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``gamma_{n+3} S_i`` (``+ gamma_T S_i`` where the norm is of a float32 per-example gradient), ``S_i =
    sum_t ||w_t|| ||x_t||``, ``n = B T`` rows, ``gamma_n = n u / (1 - n u)``, ``u = 2^-24`` (Higham)."""
    b, d_in, d_out = len(x), layer.in_features, layer.out_features
    x3, w3 = x.double().reshape(b, -1, d_in), w.double().reshape(b, -1, d_out)
    t = x3.shape[1]
    mags = (x3.norm(dim=2) * w3.norm(dim=2)).sum(1)

    def gamma(n):
        return n * 2.0**-24 / (1 - n * 2.0**-24)

    extra = gamma(t) if t > 1 and t * (d_in + d_out) > d_in * d_out else 0.0
    return (gamma(b * t + 3) + extra) * mags


CASES = ["linear-2d", "linear-gram", "linear-per-example", "linear-4d", "linear-no-bias", "embedding", "layer-norm"]


@pytest.mark.parametrize("name", CASES)
def test_norms_and_clipped_sums_match_opacus_per_example_gradients(name):
    layer, x = _case(name)
    w = torch.randn(*layer(x).shape, generator=torch.Generator().manual_seed(1))
    ref = _opacus_grad_samples(layer, x, w)
    norms_fn, clipped_fn = LAYERS[type(layer)]
    norms, state = norms_fn(layer, [x], w)
    coef = torch.rand(len(x), generator=torch.Generator().manual_seed(2))
    clipped = clipped_fn(layer, state, coef)
    params = dict(layer.named_parameters())
    assert set(norms) == set(clipped) == set(params.values())
    for n, p in params.items():
        want = ref[n].reshape(len(x), -1).norm(dim=1).double()
        if isinstance(layer, nn.Linear) and n == "weight":  # + the bound on the batched float32 sum's rounding
            want = want + _linear_bound(layer, x, w)
        torch.testing.assert_close(norms[p].double(), want, rtol=1e-6, atol=0)
        torch.testing.assert_close(clipped[p], torch.einsum("n,n...->...", coef, ref[n]), rtol=1e-5, atol=1e-6)


def test_embedding_padding_rows_get_no_gradient():
    """torch gives ``padding_idx`` no gradient; so do the norm and the clipped sum (``torch.func`` reference:
    Opacus' embedding grad sampler ignores ``padding_idx``)."""
    layer = nn.Embedding(6, 4, padding_idx=2)
    x = torch.randint(0, 6, (5, 12), generator=torch.Generator().manual_seed(3))
    x[:, ::3] = 2
    w = torch.randn(5, 12, 4, generator=torch.Generator().manual_seed(4))
    ref = _func_grad_samples(layer, x, w)["weight"]
    assert float(ref[:, 2].abs().max()) == 0.0
    norms, state = LAYERS[nn.Embedding][0](layer, [x], w)
    torch.testing.assert_close(norms[layer.weight], ref.reshape(5, -1).norm(dim=1), rtol=1e-6, atol=0)
    coef = torch.rand(5, generator=torch.Generator().manual_seed(5))
    got = LAYERS[nn.Embedding][1](layer, state, coef)[layer.weight]
    torch.testing.assert_close(got, torch.einsum("n,n...->...", coef, ref), rtol=1e-5, atol=1e-6)


def test_frozen_parameters_get_no_norm_and_unusual_embeddings_take_the_per_example_path():
    layer = nn.LayerNorm(4)
    layer.bias.requires_grad_(False)
    norms, state = LAYERS[nn.LayerNorm][0](layer, [torch.randn(3, 2, 4)], torch.randn(3, 2, 4))
    assert set(norms) == {layer.weight}
    assert handles(nn.Linear(2, 2)) and handles(nn.Embedding(3, 2)) and not handles(nn.Conv1d(1, 1, 1))
    assert not handles(nn.Embedding(3, 2, scale_grad_by_freq=True)) and not handles(nn.Embedding(3, 2, sparse=True))
