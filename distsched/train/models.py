"""Models: a small MLP, a small CNN for 8x8 images, or any factory given by import path."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from distsched._checks import check_int
from distsched.config import import_object
from distsched.train.config import ModelConfig


def mlp(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (64,)) -> nn.Module:
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear``."""
    check_int("num_classes", num_classes, 2)
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (16, 32)) -> nn.Module:
    """Two 3x3 conv layers (``hidden`` channels, padding 1, ReLU), 2x2 max-pool, a linear head.
    Needs ``input_shape = (channels, height, width)``."""
    if len(input_shape) != 3:
        raise ValueError(
            f"model.name 'cnn' needs image data (channels, height, width), got input shape {tuple(input_shape)}"
        )
    if len(hidden) != 2:
        raise ValueError(f"model.hidden must hold 2 channel counts for 'cnn', got {list(hidden)}")
    c, h, w = input_shape
    c1, c2 = hidden
    return nn.Sequential(
        nn.Conv2d(c, c1, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * (h // 2) * (w // 2), num_classes),
    )


def build_model(cfg: ModelConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The model named by ``cfg``; call under a fixed torch seed for identical replicas."""
    if cfg.name == "mlp":
        return mlp(input_shape, num_classes, cfg.hidden)
    if cfg.name == "cnn":
        hidden = cfg.hidden if len(cfg.hidden) == 2 else [16, 32]
        return cnn(input_shape, num_classes, hidden)
    model = import_object(cfg.name, "model.name")(input_shape=tuple(input_shape), num_classes=num_classes, **cfg.kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.name: {cfg.name!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model
