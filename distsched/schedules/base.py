"""The schedule base: a pure, picklable function ``step -> value``.

Why a frozen dataclass and not a closure: a dataclass pickles (Ray ships schedules to workers and
checkpoints name them), prints its parameters, compares by value, and validates them once in
``__post_init__``. A schedule holds no state; the step is always passed in, so resuming a run is
just calling it with the resumed step (no ``last_epoch = -1`` bookkeeping).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np


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
        """Parameter name -> type annotation, for ``distsched schedule --list``."""
        return {f.name: str(f.type) for f in dataclasses.fields(cls)}
