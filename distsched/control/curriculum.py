"""Curriculum phases: one LR factor per phase, a brief spike, then a final consolidation phase."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from distsched._checks import check_increasing, check_int, check_non_negative, check_positive
from distsched.schedules.controlled import Controller


class CurriculumPhases(Controller):
    """``f(t) = phase_factors[p(t)]``, except ``f(t) = spike_factor`` for the first ``spike_steps``
    steps of the last phase (the spike before consolidation at ``phase_factors[-1]``).

    The phase ``p(t)`` advances either at fixed ``boundaries`` (the steps where phases 1.. start) or
    by feedback: ``advance(step)`` when the curriculum moves on, or automatically in ``update`` after
    more than ``patience`` evaluations without a relative improvement of ``threshold``.
    Curriculum with a re-warming spike before the final phase: Bengio et al. 2009, "Curriculum Learning";
    re-warming as in Loshchilov & Hutter 2017.
    """

    _state_keys = ("phase", "phase_starts", "best", "num_bad", "updates")

    def __init__(
        self,
        phase_factors: Sequence[float],
        *,
        spike_factor: float = 2.0,
        spike_steps: int = 0,
        boundaries: Sequence[int] | None = None,
        patience: int | None = None,
        threshold: float = 1e-3,
    ) -> None:
        if len(phase_factors) < 1:
            raise ValueError("phase_factors must hold at least 1 factor, got 0")
        self.phase_factors = tuple(check_non_negative(f"phase_factors[{i}]", f) for i, f in enumerate(phase_factors))
        self.spike_factor = check_positive("spike_factor", spike_factor)
        self.spike_steps = check_int("spike_steps", spike_steps, 0)
        self.boundaries = None if boundaries is None else check_increasing("boundaries", boundaries, 1)
        if self.boundaries is not None and len(self.boundaries) != len(self.phase_factors) - 1:
            raise ValueError(
                f"boundaries must have len(phase_factors) - 1 = {len(self.phase_factors) - 1} entries, "
                f"got {len(self.boundaries)}"
            )
        if boundaries is not None and patience is not None:
            raise ValueError("patience must be None when boundaries are given (phases advance at the boundaries)")
        self.patience = None if patience is None else check_int("patience", patience, 0)
        self.threshold = check_non_negative("threshold", threshold)
        self.phase = 0
        self.phase_starts = [0]
        self.best = math.inf
        self.num_bad = 0
        self.updates = 0

    @property
    def num_phases(self) -> int:
        return len(self.phase_factors)

    def _phase_and_start(self, step: int) -> tuple[int, int]:
        if self.boundaries is not None:
            p = bisect.bisect_right(self.boundaries, step)
            return p, (self.boundaries[p - 1] if p > 0 else 0)
        p = bisect.bisect_right(self.phase_starts, step) - 1
        return max(p, 0), self.phase_starts[max(p, 0)]

    def multiplier(self, step: int) -> float:
        p, start = self._phase_and_start(step)
        if p == self.num_phases - 1 and p > 0 and step - start < self.spike_steps:
            return self.spike_factor
        return self.phase_factors[p]

    @property
    def factor(self) -> float:  # type: ignore[override]
        return self.phase_factors[self.phase]

    def advance(self, step: int) -> int:
        """Start the next phase at ``step`` (no-op in the last phase); returns the phase index."""
        if self.boundaries is not None:
            raise ValueError("advance() needs boundaries=None (phases here advance at fixed boundaries)")
        step = check_int("step", step, self.phase_starts[-1])
        if self.phase < self.num_phases - 1:
            self.phase += 1
            self.phase_starts.append(step)
            self.best, self.num_bad = math.inf, 0
        return self.phase

    def update(self, signal: float, step: int | None = None) -> int:
        """Feed the loss measured at ``step`` (required); with ``patience`` set, a plateau advances the
        phase (the next phase starts at ``step + 1``). Returns the current phase."""
        if step is None:
            raise ValueError("step must be given to CurriculumPhases.update (the phase is a function of the step)")
        loss = signal
        self.updates += 1
        if self.boundaries is not None:
            self.phase = self._phase_and_start(step + 1)[0]
            return self.phase
        if self.patience is None:
            return self.phase
        loss = float(loss)
        if loss < self.best * (1.0 - self.threshold):
            self.best, self.num_bad = loss, 0
        else:
            self.num_bad += 1
        if self.num_bad > self.patience:
            self.advance(step + 1)
        return self.phase
