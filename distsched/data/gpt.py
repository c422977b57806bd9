"""``gpt``: a small decoder-only transformer (GPT-2 layout, pre-LayerNorm), built from ``nn.Linear``,
``nn.Embedding`` and ``nn.LayerNorm`` only, so that Opacus computes per-sample gradients with its hooks
(and ghost clipping) and ``ModuleValidator.validate`` finds nothing to fix.

Per block (Radford et al. 2019; nanoGPT's ``model.py``)::

    x = x + proj(attention(q(ln1 x), k(ln1 x), v(ln1 x)))     softmax(q k^T / sqrt(d_head) + causal mask) v
    x = x + fc2(gelu(fc1(ln2 x)))                             hidden width 4 * dim

Token and position embeddings in, ``ln_f`` and a linear head (not tied to the embedding) out. Parameters:
about ``12 layers dim^2 + 2 * 256 dim + context dim``; e.g. ``layers=4, dim=128``: 0.86M,
``layers=6, dim=256``: 4.9M, ``layers=8, dim=512``: 25.6M.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distsched._checks import check_int


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v projections and a causal mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim must be a multiple of model.heads={heads}, got {dim}")
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (m(x).view(b, t, self.heads, c // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    """Tokens ``(B, T)`` (any integer dtype, ``T <= context``) -> logits ``(B, T, vocab)``."""

    def __init__(self, vocab: int, context: int, layers: int = 4, heads: int = 4, dim: int = 128) -> None:
        super().__init__()
        self.vocab = check_int("num_classes", vocab, 2)
        self.context = check_int("model.context", context, 1)
        check_int("model.layers", layers, 1)
        check_int("model.heads", heads, 1)
        check_int("model.dim", dim, 1)
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        for name, p in self.named_parameters():  # GPT-2 init; residual projections scaled by 1/sqrt(2 L)
            if p.dim() == 2:
                std = 0.02 / (2 * layers) ** 0.5 if name.endswith(("proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        if t > self.context:
            raise ValueError(f"sequence length must be <= context {self.context}, got {t}")
        pos = torch.arange(t, device=idx.device).repeat(b, 1)  # per-sample positions (Opacus: a batch dim, contiguous)
        x = self.tok(idx.long()) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def gpt(
    input_shape: Sequence[int], num_classes: int, layers: int = 4, heads: int = 4, dim: int = 128,
    context: int | None = None,
) -> GPT:
    """The model factory: ``input_shape = (T,)`` (the data set's context), ``num_classes`` the vocabulary;
    ``context`` (default ``T``) must be at least ``T``."""
    shape = tuple(input_shape)
    if len(shape) != 1:
        raise ValueError(f"model.name 'gpt' needs token sequences (context,), got input shape {shape}")
    context = shape[0] if context is None else check_int("model.context", context, 1)
    if context < shape[0]:
        raise ValueError(f"model.context must be >= the data's context {shape[0]}, got {context}")
    return GPT(num_classes, context, layers, heads, dim)
