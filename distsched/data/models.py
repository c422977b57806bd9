"""Model builders shared by ``train`` and ``simulate``: a small MLP, a small CNN for 8x8 images, a small
decoder-only transformer (:mod:`distsched.data.gpt`), or a user factory given by import path.

The factory contract (one for both commands): ``name: "package.module:function"`` with ``kwargs``;
``function(input_shape=(...), num_classes=K, **kwargs)`` returns a ``torch.nn.Module``. Call under a
fixed torch seed for identical replicas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distsched._checks import check_int
from distsched.config import check_kwargs, import_object

BUILTIN_MODELS = ("mlp", "cnn", "gpt")


def mlp(input_shape: Sequence[int] | int, num_classes: int, hidden: Sequence[int] = (64,)) -> nn.Module:
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear`` (e.g. 64-128-10); ``input_shape`` may be
    a plain feature count."""
    check_int("num_classes", num_classes, 2)
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    width = check_int("num_features", math.prod(shape), 1)
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        check_int("model.hidden", h, 1)
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


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (64,),
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """``mlp``, ``cnn`` (``hidden`` = its two channel counts, else ``(16, 32)``), ``gpt``
    (:func:`distsched.data.gpt.gpt` with ``kwargs``: layers, heads, dim, context) or the user's factory."""
    if name == "mlp":
        return mlp(input_shape, num_classes, hidden)
    if name == "cnn":
        return cnn(input_shape, num_classes, hidden if len(hidden) == 2 else (16, 32))
    if name == "gpt":
        from distsched.data.gpt import gpt

        check_kwargs(gpt, dict(kwargs or {}), "model.kwargs")
        return gpt(input_shape, num_classes, **dict(kwargs or {}))
    factory = import_object(name, "model.name")
    model = factory(input_shape=tuple(input_shape), num_classes=num_classes, **dict(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.name: {name!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters as one flat float32 vector (a copy)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
