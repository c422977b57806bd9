"""Budget guard: a run never takes a step that would exceed ``(target_epsilon, delta)``.

Before each step the training loop asks ``guard.allows((sigma, q))``; when the answer is ``False`` it
checkpoints and stops. The guard's ``state_dict`` holds the accountant history, so a resumed run
continues from the budget already spent and cannot reset it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from distsched._checks import check_int, check_positive
from distsched.privacy.accounting import Accountant, Segment, as_segment, check_delta

#: largest step count the guard searches for (beyond it a segment is treated as unlimited).
MAX_STEPS = 1 << 40


class BudgetExhausted(RuntimeError):
    """Raised by :meth:`BudgetGuard.record` for a step the budget does not allow."""


class BudgetGuard:
    """Says whether the next step(s) keep ``epsilon(history + next) <= target_epsilon`` at ``delta``.

    Args:
        target_epsilon: the budget, > 0.
        delta: in (0, 1).
        accountant: ``"rdp"``, ``"prv"``, ``"gdp"`` or an :class:`Accountant` (its history is the
            budget already spent).

    Once per ``(history so far, sigma, q)`` the guard finds the largest number of such steps the budget
    allows (exponential search then bisection, epsilon being increasing in the number of steps) and then
    answers in O(1) while the run keeps that ``(sigma, q)``. With ``rdp`` the first question about a new
    ``(sigma, q)`` is answered by one direct check, so a noise schedule that changes every step costs one
    RDP conversion per step, not a search.
    """

    def __init__(self, target_epsilon: float, delta: float, accountant: str | Accountant = "rdp") -> None:
        self.target_epsilon = check_positive("target_epsilon", target_epsilon)
        self.delta = check_delta(delta)
        self.accountant = accountant if isinstance(accountant, Accountant) else Accountant(accountant)
        self._headroom: dict[tuple[Any, ...], int] = {}
        self._seen: set[tuple[Any, ...]] = set()

    # -- questions --------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """Epsilon spent so far."""
        return self.accountant.epsilon(self.delta)

    @property
    def steps(self) -> int:
        return self.accountant.steps

    def allows(self, segment: Segment | Sequence[float]) -> bool:
        """Whether recording ``segment`` = ``(sigma, q[, steps=1])`` keeps epsilon <= target."""
        seg = as_segment(segment)
        if seg.steps == 0:
            return self.epsilon <= self.target_epsilon
        n_base, already = self._split(seg)
        key = self._key(n_base, seg)
        known = self._headroom.get(key)
        if known is not None:
            return already + seg.steps <= known
        if self.accountant.mechanism == "rdp" and key not in self._seen:
            # first time with this (sigma, q) after this history: one direct check (an RDP check is cheap);
            # a second time means the segment repeats, and its headroom is then found once
            if len(self._seen) > 4096:
                self._seen.clear()
            self._seen.add(key)
            return self.accountant.epsilon_after(self.delta, seg) <= self.target_epsilon
        return already + seg.steps <= self._max_total(n_base, seg, already + seg.steps)

    def remaining_steps(self, noise_multiplier: float, sample_rate: float) -> int:
        """The largest ``k`` with ``allows((noise_multiplier, sample_rate, k))`` (``MAX_STEPS`` if unbounded)."""
        seg = as_segment((noise_multiplier, sample_rate, 1))
        n_base, already = self._split(seg)
        return max(0, self._max_total(n_base, seg, already + 1) - already)

    # -- recording --------------------------------------------------------------------------
    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record steps the budget allows; raise :class:`BudgetExhausted` (recording nothing) otherwise."""
        steps = check_int("steps", steps, 0)
        if not self.allows((noise_multiplier, sample_rate, steps)):
            raise BudgetExhausted(
                f"{steps} step(s) with noise_multiplier={noise_multiplier}, sample_rate={sample_rate} would exceed "
                f"target_epsilon={self.target_epsilon} at delta={self.delta} (spent {self.epsilon:.4f} "
                f"in {self.steps} steps)"
            )
        self.accountant.step(noise_multiplier, sample_rate, steps)

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Target, delta and the accountant's full history."""
        return {
            "target_epsilon": self.target_epsilon,
            "delta": self.delta,
            "accountant": self.accountant.state_dict(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the spent budget. The target becomes ``min(own, saved)``: resuming never enlarges it.
        A different ``delta`` is refused (epsilons at different deltas are not comparable)."""
        for key in ("target_epsilon", "delta", "accountant"):
            if key not in state_dict:
                raise ValueError(f"budget guard state_dict is missing the key {key!r}")
        if not math.isclose(float(state_dict["delta"]), self.delta, rel_tol=1e-12, abs_tol=0.0):
            raise ValueError(f"delta must equal the checkpoint's delta={state_dict['delta']}, got {self.delta}")
        self.accountant.load_state_dict(state_dict["accountant"])
        self.target_epsilon = min(self.target_epsilon, float(state_dict["target_epsilon"]))
        self._headroom.clear()
        self._seen.clear()

    def __repr__(self) -> str:
        return (
            f"BudgetGuard(target_epsilon={self.target_epsilon}, delta={self.delta}, "
            f"mechanism={self.accountant.mechanism!r}, steps={self.steps})"
        )

    # -- internals --------------------------------------------------------------------------
    def _split(self, seg: Segment) -> tuple[int, int]:
        """Number of segments before the trailing run of ``(sigma, q)`` steps, and that run's length.

        The history only grows (or is replaced, which bumps ``generation``), so that prefix is identified
        by its length and the accountant's generation."""
        last = self.accountant.last_segment
        n = self.accountant.num_segments
        if last is not None and last.noise_multiplier == seg.noise_multiplier and last.sample_rate == seg.sample_rate:
            return n - 1, last.steps
        return n, 0

    def _key(self, n_base: int, seg: Segment) -> tuple[Any, ...]:
        return (self.target_epsilon, self.accountant.generation, n_base, seg.noise_multiplier, seg.sample_rate)

    def _max_total(self, n_base: int, seg: Segment, start: int) -> int:
        key = self._key(n_base, seg)
        known = self._headroom.get(key)
        if known is not None:
            return known
        base = self.accountant.history[:n_base]
        acc = Accountant(self.accountant.mechanism, base, eps_error=self.accountant.eps_error)
        total = self._search(lambda k: acc.epsilon_after(self.delta, seg._replace(steps=k)), start)
        if len(self._headroom) > 1024:
            self._headroom.clear()
        self._headroom[key] = total
        return total

    def _search(self, eps_of: Any, start: int) -> int:
        """Largest k >= 0 with ``eps_of(k) <= target`` (``eps_of`` increasing in k); probes from ``start``."""
        target = self.target_epsilon
        lo, hi = 0, None
        k = max(1, start)
        while hi is None:
            if eps_of(k) <= target:
                lo = k
                if k >= MAX_STEPS:
                    return MAX_STEPS
                k *= 2
            else:
                hi = k
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if eps_of(mid) <= target:
                lo = mid
            else:
                hi = mid
        return lo
