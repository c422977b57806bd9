"""Test accuracy and mean cross-entropy of a classifier, for ``train`` (a dataset, batched) and
``simulate`` (resident tensors, one pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, device: torch.device, batch_size: int = 512) -> dict[str, float]:
    """``{"test_accuracy": mean(argmax f(x) == y), "test_loss": sum CE / n}`` over ``data`` in batches;
    the model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        out = model(x)
        loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
        correct += int((out.argmax(dim=1) == y).sum())
        total += len(y)
    model.train(was_training)
    return {"test_accuracy": correct / max(total, 1), "test_loss": loss_sum / max(total, 1)}


@torch.no_grad()
def evaluate_tensors(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` on ``(x, y)`` in one forward pass."""
    logits = model(x)
    return float((logits.argmax(dim=1) == y).float().mean()), float(F.cross_entropy(logits, y))
