"""The schedule base: a pure, picklable function ``step -> value``.

Why a frozen dataclass and not a closure: a dataclass pickles (Ray ships schedules to workers and
checkpoints name them), prints its parameters, compares by value, and validates them once in
``__post_init__``. A schedule holds no state; the step is always passed in, so resuming a run is
just calling it with the resumed step (no ``last_epoch = -1`` bookkeeping).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import numpy as np


def _pretty_type(annotation: object) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("typing.", "").replace("collections.abc.", "")
    text = re.sub(r"\bSchedule\b", "schedule", text)
    text = text.replace("tuple[schedule, ...]", "list[schedule]").replace("tuple[int, ...]", "list[int]")
    return text.replace("tuple[float, ...]", "list[float]")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A pure function of the (0-based) step. Subclasses implement ``__call__``."""

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def values(self, steps: int | Iterable[int]) -> np.ndarray:
        """Values at ``range(steps)`` (an int) or at the given steps, as float64."""
        grid = range(steps) if isinstance(steps, int) else steps
        return np.fromiter((self(int(t)) for t in grid), dtype=np.float64)

    @classmethod
    def parameters(cls) -> dict[str, str]:
        """Parameter name -> ``type`` or ``type = default``, for ``distsched schedule --list``."""
        out = {}
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            text = _pretty_type(f.type)
            if f.default is not dataclasses.MISSING:
                default = f.default
                text += f" = {default:.6g}" if isinstance(default, float) else f" = {default}"
            out[f.name] = text
        return out
