"""Models for simulation: an MLP, or a user factory ``"module:function"``.

A factory is called as ``fn(num_features, num_classes, **params)`` and returns an ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distsched._checks import check_int
from distsched.config import import_object


def mlp(num_features: int, num_classes: int, hidden: Sequence[int] = (128,)) -> nn.Module:
    """``Linear -> ReLU`` for each hidden width, then a linear classifier (e.g. 64-128-10)."""
    widths = [check_int("num_features", num_features, 1), *(check_int("model.hidden", h, 1) for h in hidden)]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], check_int("num_classes", num_classes, 2)))
    return nn.Sequential(nn.Flatten(), *layers)


def build_model(
    num_features: int,
    num_classes: int,
    hidden: Sequence[int] = (128,),
    factory: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> nn.Module:
    """An :func:`mlp` or the user's factory."""
    if factory is None:
        return mlp(num_features, num_classes, hidden)
    model = import_object(factory, "model.factory")(num_features, num_classes, **dict(params or {}))
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.factory {factory!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one flat float32 vector (a copy)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
