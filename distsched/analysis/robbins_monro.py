"""Robbins-Monro conditions of a schedule: ``sum lr_t = inf`` and ``sum lr_t^2 < inf``.

These are the classical step-size conditions for stochastic approximation to converge to the
optimum (Robbins & Monro 1951, "A Stochastic Approximation Method"): the steps must be large
enough in total to reach it from anywhere, and small enough that the gradient noise averages out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class RobbinsMonro:
    """Verdict on ``sum lr_t`` (diverges?) and ``sum lr_t^2`` (converges?), with how it was reached."""

    sum_diverges: bool
    sum_sq_converges: bool
    exact: bool
    explanation: str
    tail_exponent: float | None = None  # p in lr_t ~ c t^-p when estimated numerically

    @property
    def satisfied(self) -> bool:
        return self.sum_diverges and self.sum_sq_converges


def _constant_tail(value: float, why: str) -> RobbinsMonro:
    if value > 0:
        return RobbinsMonro(True, False, True, f"{why}: lr_t -> {value:g} > 0, so both sums diverge "
                            "(SGD keeps a noise floor; the optimum is not reached)")
    return RobbinsMonro(False, True, True, f"{why}: lr_t = 0 from some step on, so both sums are finite "
                        "(the steps stop before an arbitrary start can reach the optimum)")


def _exact(s: Callable[[int], float]) -> RobbinsMonro | None:
    """Closed-form verdicts for the schedule families whose tail is known; None otherwise."""
    from distsched import schedules as S

    if isinstance(s, S.Constant):
        return _constant_tail(s.lr, f"constant lr={s.lr:g}")
    if isinstance(s, S.Cosine):
        return _constant_tail(s.min_lr, f"cosine stays at min_lr after total_steps={s.total_steps}")
    if isinstance(s, (S.Warmup, S.Join)):
        inner = s.schedule if isinstance(s, S.Warmup) else s.schedules[-1]
        r = robbins_monro(inner)
        where = "the last joined schedule sets the tail"
        if isinstance(s, S.Warmup):
            where = "warmup only changes finitely many steps"
        return dataclasses.replace(r, explanation=f"{where}; {r.explanation}")
    if isinstance(s, S.Scale):
        if s.factor == 0:
            return _constant_tail(0.0, "scaled by 0")
        r = robbins_monro(s.schedule)
        why = f"scaling by {s.factor:g} > 0 changes no sum's finiteness"
        return dataclasses.replace(r, explanation=f"{why}; {r.explanation}")
    if isinstance(s, S.Clamp):
        if s.min_lr > 0:
            return RobbinsMonro(True, False, True, f"lr_t >= min_lr={s.min_lr:g} > 0 for all t, so both sums diverge")
        r = robbins_monro(s.schedule)
        if not r.sum_diverges or math.isinf(s.max_lr):
            return dataclasses.replace(r, explanation=f"clamping from above keeps finite sums finite; {r.explanation}")
        return None
    fam = _exact_families(s, S)
    if fam is not None:
        return fam
    if isinstance(s, S.Repeat):
        peak = max(float(s.schedule(t)) for t in range(min(s.period, 100_000)))
        if peak > 0:
            return RobbinsMonro(True, False, True, f"periodic with period {s.period} and peak {peak:g} > 0: every "
                                "period adds a fixed positive amount to both sums, so both diverge")
        return _constant_tail(0.0, f"periodic with period {s.period}, zero everywhere")
    return None


def _power_tail(p: float, why: str) -> RobbinsMonro:
    div, conv = p <= 1.0, p > 0.5
    return RobbinsMonro(div, conv, True, f"{why}: lr_t ~ c t^-{p:g}; sum lr_t {'diverges' if div else 'converges'} "
                        f"(p {'<=' if div else '>'} 1), sum lr_t^2 {'converges' if conv else 'diverges'} "
                        f"(2p {'>' if conv else '<='} 1)", p)


def _geometric(ratio: float, why: str) -> RobbinsMonro:
    if ratio >= 1.0:
        return RobbinsMonro(True, False, True, f"{why}: ratio {ratio:g} >= 1, lr_t does not decay, both sums diverge")
    return RobbinsMonro(False, True, True, f"{why}: geometric decay with ratio {ratio:g} < 1, both sums are finite "
                        "(the steps stop short of the optimum)", math.inf)


def _exact_families(s: Callable[[int], float], S) -> RobbinsMonro | None:
    """The catalogue's decays, cycles and coupled schedules (looked up by name: they may be absent)."""

    def isa(name: str) -> bool:
        cls = getattr(S, name, None)
        return cls is not None and isinstance(s, cls)

    if isa("Step"):
        return _geometric(s.gamma, f"step decay x{s.gamma:g} every {s.step_size} steps")
    if isa("Exponential"):
        return _geometric(s.gamma, f"exponential decay lr * {s.gamma:g}^t")
    if isa("MultiStep"):
        last = s.milestones[-1]
        return _constant_tail(s(last), f"multistep holds its value after the last milestone {last}")
    if isa("InverseTime"):
        if s.decay_rate == 0:
            return _constant_tail(s.lr, "inverse time with decay_rate=0")
        return _power_tail(1.0, f"inverse time lr / (1 + {s.decay_rate:g} t)")
    if isa("InversePower"):
        return _power_tail(s.power, f"inverse power lr / (1 + t)^{s.power:g}")
    if isa("InverseSqrt"):
        return _power_tail(0.5, "inverse square root")
    if isa("Polynomial") or isa("WarmupStableDecay"):
        return _constant_tail(s.min_lr, f"{type(s).__name__} holds min_lr after total_steps={s.total_steps}")
    if isa("Linear"):
        return _constant_tail(s.lr * s.end_factor, f"linear holds lr * end_factor after total_steps={s.total_steps}")
    if isa("OneCycle"):
        why = f"one-cycle holds its final value after total_steps={s.total_steps}"
        return _constant_tail(s(s.total_steps - 1), why)
    if isa("CosineRestarts"):
        if s.min_lr > 0:
            return RobbinsMonro(True, False, True, f"SGDR with min_lr={s.min_lr:g} > 0: both sums diverge")
        m, d = s.cycle_mult, s.cycle_decay
        # cycle i adds ~ T_0 m^i (lr d^i)/2 to sum lr_t and ~ T_0 m^i (lr d^i)^2 3/8 to sum lr_t^2
        div, conv = m * d >= 1.0, m * d * d < 1.0
        return RobbinsMonro(div, conv, True, f"SGDR: cycle i contributes ~ (cycle_mult*cycle_decay)^i = "
                            f"{m * d:g}^i to sum lr_t ({'diverges' if div else 'converges'}) and "
                            f"(cycle_mult*cycle_decay^2)^i = {m * d * d:g}^i to sum lr_t^2 "
                            f"({'converges' if conv else 'diverges'})")
    if isa("Cyclic"):
        if s.min_lr > 0:
            return RobbinsMonro(True, False, True, f"cyclic with min_lr={s.min_lr:g} > 0: both sums diverge")
        if s.mode == "triangular" or (s.mode == "exp_range" and s.gamma == 1.0):
            return RobbinsMonro(True, False, True, "periodic triangular cycles: every cycle adds a fixed positive "
                                "amount to both sums, so both diverge")
        ratio = 0.5 if s.mode == "triangular2" else s.gamma ** s.period
        return _geometric(ratio, f"cyclic {s.mode}: the cycle heights shrink geometrically")
    if isa("PhaseShift"):
        r = robbins_monro(s.schedule)
        return dataclasses.replace(r, explanation=f"a finite phase shift changes no sum; {r.explanation}")
    if isa("CurriculumSpike"):
        r = robbins_monro(s.phases[-1])
        return dataclasses.replace(r, explanation=f"the consolidation phase sets the tail; {r.explanation}")
    if isa("DiffusionCoupled"):
        return _constant_tail(s(10**15), "diffusion-coupled lr / (1 + beta_t) with beta held after its horizon")
    return None


def _window_sums(s: Callable[[int], float], t: int, samples: int) -> tuple[float, float]:
    """Estimates of ``sum_{t/2 < u <= t} lr_u`` and of ``sum lr_u^2`` from ``samples`` points."""
    lo = t // 2 + 1
    grid = np.unique(np.linspace(lo, t, samples).astype(np.int64))
    vals = np.fromiter((float(s(int(u))) for u in grid), dtype=np.float64, count=len(grid))
    width = t - lo + 1
    return float(vals.mean() * width), float((vals**2).mean() * width)


def robbins_monro(
    schedule: Callable[[int], float],
    *,
    horizon: int = 10**12,
    decades: int = 4,
    samples: int = 997,
    tol: float = 0.05,
) -> RobbinsMonro:
    """Check ``sum_t lr_t = inf`` and ``sum_t lr_t^2 < inf``.

    Exact for the catalogue's families (constant, cosine, SGDR, step, multistep, exponential, inverse
    time/power/sqrt, polynomial, linear, one-cycle, cyclic, WSD, coupled) and compositions (warmup,
    join, scale, clamp, repeat). Otherwise
    numeric: over dyadic windows ``(t/2, t]`` for ``t`` on the last ``decades`` decades before
    ``horizon`` the window sums behave like ``t^(1-p)`` for ``lr_t ~ c t^-p``; their log-log slope
    gives ``p``. ``sum lr_t`` diverges iff ``p <= 1`` and ``sum lr_t^2`` converges iff ``p > 1/2``;
    a slope within ``tol`` of a boundary is reported as borderline (``1/t`` and ``1/sqrt(t)`` sit
    exactly there and diverge logarithmically, which is the verdict given).
    """
    exact = _exact(schedule)
    if exact is not None:
        return exact
    ts = np.unique(np.logspace(math.log10(horizon) - decades, math.log10(horizon), 4 * decades + 1).astype(np.int64))
    sums = np.array([_window_sums(schedule, int(t), samples) for t in ts])
    a1 = sums[:, 0]
    if np.any(~np.isfinite(sums)) or np.any(a1 < 0):
        raise ValueError("schedule must return finite values >= 0 on the tail steps")
    if np.all(a1[-3:] == 0):
        why = f"numeric: lr_t = 0 (or below the float range) on the sampled steps near t={ts[-1]:.0e}"
        return RobbinsMonro(False, True, False, f"{why}; both sums are finite", None)
    logt = np.log(ts)
    pos = a1 > 0
    slope1 = float(np.polyfit(logt[pos], np.log(a1[pos]), 1)[0])  # = 1 - p
    p = 1.0 - slope1
    if p > 50:  # faster than any power: geometric or super-geometric decay
        return RobbinsMonro(False, True, False, "numeric: lr_t decays faster than any power of t "
                            "(e.g. exponential), so sum lr_t converges: the steps stop short of the optimum", math.inf)
    sum_div = p <= 1.0 + tol
    sq_conv = p > 0.5 + tol
    notes = []
    if abs(p - 1.0) <= tol:
        notes.append("borderline p ~ 1 (like 1/t): sum lr_t diverges logarithmically")
    if abs(p - 0.5) <= tol:
        notes.append("borderline p ~ 1/2 (like 1/sqrt t): sum lr_t^2 diverges logarithmically")
    expl = (f"numeric: window sums over t in [{ts[0]:.0e}, {ts[-1]:.0e}] fit lr_t ~ c t^-{p:.3f}; "
            f"sum lr_t {'diverges' if sum_div else 'converges'} (p {'<=' if sum_div else '>'} 1), "
            f"sum lr_t^2 {'converges' if sq_conv else 'diverges'} (p {'>' if sq_conv else '<='} 1/2)")
    if notes:
        expl += "; " + "; ".join(notes)
    return RobbinsMonro(sum_div, sq_conv, False, expl, p)
