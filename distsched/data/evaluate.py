"""The loss of a batch and the evaluation of a model, for ``train`` (a dataset, batched) and ``simulate``
(resident tensors, one pass). One loss for both tasks: classification (logits ``(B, K)``, labels ``(B,)``)
and next-token prediction (logits ``(B, T, V)``, targets ``(B, T)``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


def token_cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over every target: ``logits (..., K)`` against integer targets ``y (...)``, i.e.
    ``mean_i -log softmax(z_i)[y_i]`` over the ``y.numel()`` targets (a label per example, or a next
    token per position). For classification this is ``F.cross_entropy(logits, y)`` exactly."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).long(), reduction=reduction)


def bits_per_token(loss_nats: float) -> float:
    """A mean cross-entropy in nats as bits: ``loss / ln 2`` (bits per byte for a byte-level model)."""
    return loss_nats / math.log(2.0)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 512) -> dict[str, float]:
    """``{"test_accuracy": mean(argmax f(x) == y), "test_loss": sum CE / n}`` over every target of
    ``data`` in batches (``n``: examples, or positions for sequence targets, which also report
    ``"test_bpb"`` = test_loss / ln 2); the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum, sequences = 0, 0, 0.0, False
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        out = model(x)
        sequences = sequences or y.dim() > 1
        loss_sum += float(token_cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(dim=-1) == y).sum())
        total += y.numel()
    model.train(was_training)
    result = {"test_accuracy": correct / max(total, 1), "test_loss": loss_sum / max(total, 1)}
    if sequences:
        result["test_bpb"] = bits_per_token(result["test_loss"])
    return result


@torch.no_grad()
def evaluate_tensors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``(x, y)`` over every target, in batches of
    ``batch_size`` examples (one forward pass for small sets)."""
    if len(x) <= batch_size:
        logits = model(x)
        return float((logits.argmax(dim=-1) == y).float().mean()), float(token_cross_entropy(logits, y))
    correct, loss_sum = 0.0, 0.0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = model(xb)
        correct += float((logits.argmax(dim=-1) == yb).sum())
        loss_sum += float(token_cross_entropy(logits, yb, reduction="sum"))
    n = max(y.numel(), 1)
    return correct / n, loss_sum / n
