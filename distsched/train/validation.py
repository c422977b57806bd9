"""The validation curve of a training run: every ``eval_every`` steps the held-out (test) split is
evaluated on the workers' averaged model ``theta_bar = (1/N) sum_i theta_i`` (what a sync at that step
would give; right after a sync it is the synced model itself), and the record gets ``val_loss`` (mean
cross-entropy per target), ``val_accuracy`` and, for a target per position, ``val_bpb`` (= val_loss / ln 2,
bits per byte for a byte-level model), as in :func:`distsched.data.evaluate`.

The average is a ``reduce`` to rank 0 of the flattened parameters (evaluation traffic: not counted in
the run's ``bytes``); buffers (e.g. BatchNorm statistics) are rank 0's. Rank 0 evaluates the whole
split while the others wait; no RNG stream, parameter or mode of the training is changed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from distsched.data import evaluate


def due(done: int, eval_every: int, total: int) -> bool:
    """Whether step count ``done`` gets a validation record (every ``eval_every`` steps and at the end)."""
    return eval_every > 0 and (done % eval_every == 0 or done == total)


@torch.no_grad()
def validate(model: nn.Module, test: Dataset, device: torch.device, rank: int, world: int) -> dict[str, Any]:
    """Held-out metrics of the averaged model: a collective when ``world > 1`` (every rank calls it);
    rank 0 gets ``{"val_loss", "val_accuracy"[, "val_bpb"]}``, the other ranks ``{}``."""
    params = [p for p in model.parameters()]
    mean = None
    if world > 1:
        flat = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params])
        dist.reduce(flat, dst=0)
        mean = flat / world
    if rank != 0:
        return {}
    saved = [p.detach().clone() for p in params]
    try:
        if mean is not None:
            offset = 0
            for p in params:
                n = p.numel()
                p.copy_(mean[offset:offset + n].view_as(p).to(p.dtype))
                offset += n
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            result = evaluate(model, test, device)
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    return {("val_" + k[len("test_"):]): v for k, v in result.items()}
