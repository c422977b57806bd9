"""Layer-wise (discriminative) rates: ``lr_l = lr_0 * alpha^(L - l)`` over the layer groups of a model
(Howard & Ruder 2018, "ULMFiT"; layer-wise decay as in Clark et al. 2020, "ELECTRA").

The multipliers are data on the optimizer's param groups (``"lr_multiplier"``), not a schedule
subclass: :class:`~distsched.schedules.ScheduledLR` multiplies any schedule's value by them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from distsched._checks import check_positive
from distsched.schedules.torch_adapter import MULTIPLIER_KEY

#: ``model -> [(name, [params...]), ...]`` in order from input (l = 1) to output (l = L).
Splitter = Callable[[nn.Module], Sequence[tuple[str, Sequence[nn.Parameter]]]]


def by_children(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """One layer group per top-level child that has trainable parameters, in registration order;
    parameters held directly by ``model`` join the first group."""
    groups = []
    for name, child in model.named_children():
        params = [p for p in child.parameters() if p.requires_grad]
        if params:
            groups.append((name, params))
    own = [p for p in model.parameters(recurse=False) if p.requires_grad]
    if own:
        if groups:
            groups[0] = (groups[0][0], own + groups[0][1])
        else:
            groups.append(("", own))
    return groups


def layerwise(
    model: nn.Module,
    alpha: float,
    splitter: Splitter | None = None,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Param groups ``{"params", "name", "lr_multiplier": alpha^(L - l)}`` for a torch optimizer.

    ``l = 1..L`` runs from the input to the output, so the last group has multiplier 1 and the first
    ``alpha^(L-1)`` (``alpha < 1`` trains early layers slower). ``splitter`` defaults to
    :func:`by_children`; ``group_options`` (e.g. ``weight_decay=0.0``) are copied into every group.
    Every trainable parameter must fall in exactly one group.
    """
    check_positive("alpha", alpha)
    groups = list((splitter or by_children)(model))
    if not groups:
        raise ValueError("model has no trainable parameters to group")
    seen: set[int] = set()
    for name, params in groups:
        for p in params:
            if id(p) in seen:
                raise ValueError(f"splitter put a parameter in more than one group (again in {name!r})")
            seen.add(id(p))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"splitter left trainable parameters out of every group, e.g. {missing[0]!r}")
    n = len(groups)
    return [
        {"params": list(params), "name": name, MULTIPLIER_KEY: float(alpha ** (n - l)), **group_options}
        for l, (name, params) in enumerate(groups, start=1)
    ]
