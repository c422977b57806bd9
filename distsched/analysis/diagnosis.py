"""Diagnosis of loss curves: divergence, overfitting by slow decay, underfitting by premature decay,
plateau, not converged (still falling at the end), or healthy, with the evidence and the remedies.

Remedies as usually given for LR schedules (Smith 2018, "A disciplined approach to neural network
hyper-parameters"; Loshchilov & Hutter 2017, "SGDR"): premature decay -> less aggressive decay, a
higher minimum LR, warm restarts; slow decay -> stronger decay, early stopping.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from distsched._checks import check_range

VERDICTS = ("divergence", "overfitting", "underfitting", "plateau", "not_converged", "healthy")

REMEDIES_BY_VERDICT: dict[str, tuple[str, ...]] = {
    "divergence": (
        "lower the peak LR (an LR range test or 2/lambda_max gives the ceiling)",
        "a longer warmup",
        "gradient clipping",
    ),
    "overfitting": (
        "stronger decay: decay earlier or faster, to a lower min_lr",
        "early stopping at the best validation step",
    ),
    "underfitting": (
        "less aggressive decay (decay later or more slowly)",
        "a higher minimum LR (min_lr)",
        "warm restarts (SGDR) to resume progress",
    ),
    "plateau": (
        "reduce the LR on the plateau (ReduceOnPlateau) to get below the noise floor",
        "warm restarts (WarmRestartOnPlateau) to escape a flat region",
    ),
    "not_converged": (
        "train longer (more steps, epochs or rounds) with the schedule stretched to the new length",
        "a higher peak LR if the loss falls steadily but slowly",
    ),
    "healthy": (),
}

_HUGE = 1e300

STEP_KEYS = ("step", "round", "epoch", "iteration")
TRAIN_KEYS = ("train_loss", "loss")
VAL_KEYS = ("val_loss", "valid_loss", "eval_loss", "test_loss")
LR_KEYS = ("lr", "learning_rate", "client_lr")


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """``verdict`` (one of :data:`VERDICTS`), the ``evidence`` lines and the suggested ``remedies``."""

    verdict: str
    evidence: tuple[str, ...]
    remedies: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"verdict: {self.verdict}"]
        lines += [f"  evidence: {e}" for e in self.evidence]
        lines += [f"  remedy: {r}" for r in self.remedies]
        return "\n".join(lines)


Series = tuple[np.ndarray, np.ndarray]


def _series(steps: Sequence[float] | None, values: Sequence[float] | None) -> Series | None:
    if values is None:
        return None
    v = np.asarray(values, dtype=np.float64)
    x = np.arange(len(v), dtype=np.float64) if steps is None else np.asarray(steps, dtype=np.float64)
    if len(x) != len(v):
        raise ValueError(f"steps and values must have the same length, got {len(x)} and {len(v)}")
    order = np.argsort(x, kind="stable")
    return x[order], v[order]


def _smooth(v: np.ndarray) -> np.ndarray:
    """Centred moving average over ~5% of the points (edges use the available points)."""
    w = max(1, len(v) // 20)
    if w == 1:
        return v.copy()
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(len(v))
    lo, hi = np.maximum(idx - w, 0), np.minimum(idx + w + 1, len(v))
    return (c[hi] - c[lo]) / (hi - lo)


def _interp(x: np.ndarray, y: np.ndarray, at: float) -> float:
    return float(np.interp(at, x, y))


@dataclasses.dataclass(frozen=True)
class _Curve:
    """The training curve as every verdict reads it: raw ``v`` and smoothed ``s`` over steps ``x``."""

    x: np.ndarray
    v: np.ndarray
    s: np.ndarray
    span: float
    i_min: int
    noise: float

    @classmethod
    def of(cls, tr: Series) -> _Curve:
        x, v = tr
        s = _smooth(v)
        i_min = int(np.argmin(s))
        k = max(2, len(v) // 10)
        around = slice(max(0, i_min - k), min(len(v), i_min + k + 1))
        noise = float(np.std(v[around] - s[around]))  # noise near the minimum, before any blow-up
        return cls(x, v, s, max(float(x[-1] - x[0]), 1e-12), i_min, noise)

    @property
    def start(self) -> float:
        return float(self.s[0])

    @property
    def end(self) -> float:
        return float(self.s[-1])

    def at(self, step: float) -> str:
        return f"step {step:g} ({100 * (step - self.x[0]) / self.span:.0f}% of the run)"

    def level(self, a: float, b: float) -> tuple[float, int]:
        """Mean of the raw loss over the window ``[a, b]`` (fractions of the run) and its point count."""
        x = self.x
        sel = (x >= x[0] + a * self.span) & (x <= x[0] + b * self.span)
        if not sel.any():
            return _interp(x, self.s, x[0] + 0.5 * (a + b) * self.span), 1
        return float(np.mean(self.v[sel])), int(sel.sum())


def _not_finite(tr: Series, va: Series | None) -> Diagnosis | None:
    """Divergence: a non-finite loss (|value| >= 1e300 counts: MetricsWriter stores inf as 1e308)."""
    for name, ser in (("training", tr), ("validation", va)):
        if ser is None:
            continue
        bad = ~(np.isfinite(ser[1]) & (np.abs(ser[1]) < _HUGE))
        if bad.any():
            i = int(np.argmax(bad))
            return _verdict("divergence", [f"{name} loss is not finite ({ser[1][i]:g}) from step {ser[0][i]:g} on"])
    return None


def _diverged(c: _Curve) -> Diagnosis | None:
    """Divergence: the loss rose from its minimum by more than half the progress and 3 noise std."""
    low = float(c.s[c.i_min])
    gain = c.start - low
    scale = max(gain, 0.05 * abs(c.start), 1e-12)
    if c.end - low > 0.5 * scale and c.end - low > 3 * c.noise:
        return _verdict("divergence", [
            f"training loss fell to {low:.4g} at {c.at(c.x[c.i_min])} and rose to {c.end:.4g} by the end "
            f"(+{c.end - low:.3g}, more than half of the {gain:.3g} gained)",
        ])
    return None


def _overfitting(c: _Curve, va: Series | None) -> Diagnosis | None:
    """Overfitting: validation rose from its minimum (before 85% of the run) while training kept falling."""
    if va is None or len(va[1]) < 5:
        return None
    vx, vv = va
    vs = _smooth(vv)
    j = int(np.argmin(vs))
    vlow, vend, vstart = float(vs[j]), float(vs[-1]), float(vs[0])
    rise = vend - vlow
    train_at_j = _interp(c.x, c.s, vx[j])
    if (
        vx[j] - vx[0] < 0.85 * max(vx[-1] - vx[0], 1e-12)
        and rise > max(0.1 * (vstart - vlow), 0.02 * abs(vlow))
        and c.end < train_at_j
    ):
        return _verdict("overfitting", [
            f"validation loss reached its minimum {vlow:.4g} at {c.at(vx[j])} and rose to {vend:.4g} "
            f"(+{100 * rise / max(abs(vlow), 1e-12):.1f}%)",
            f"training loss kept falling meanwhile, from {train_at_j:.4g} to {c.end:.4g}",
            f"best validation step for early stopping: {vx[j]:g}",
        ])
    return None


@dataclasses.dataclass(frozen=True)
class _Tail:
    """The end of the run: final level, tolerance, and whether the last ``flat_fraction`` is flat."""

    final: float
    tol: float
    flat: bool
    evidence_flat: str
    evidence_falling: str


def _tail(c: _Curve, flat_fraction: float, rel_tol: float) -> _Tail:
    final, n_final = c.level(0.9, 1.0)
    tol = max(rel_tol * abs(final), 3.0 * c.noise * math.sqrt(2.0 / max(n_final, 1)), 1e-12)
    ff = flat_fraction
    tail_start, _ = c.level(1.0 - ff, 1.0 - ff + 0.1)
    tail_drop = tail_start - final
    evidence_flat = (f"over the last {100 * ff:.0f}% of the run the training loss fell only from {tail_start:.4g} "
                     f"to {final:.4g} (less than the tolerance {tol:.3g})")
    if n_final < 5:
        evidence_flat += f"; only {n_final} points per 10% of the run: low confidence"
    evidence_falling = (f"training loss fell from {float(c.v[0]):.4g} to {final:.4g}, "
                        f"by {tail_drop:.3g} in the last {100 * ff:.0f}% of the run")
    return _Tail(final, tol, tail_drop < tol, evidence_flat, evidence_falling)


def _premature_decay(c: _Curve, t: _Tail, lrs: Series) -> Diagnosis | None:
    """Underfitting: the LR fell below 10% of its peak in 5-60% of the run while the loss was still
    falling, and over the last 30% the loss falls less than a tenth as fast (not converged near 0)."""
    lx, lv = lrs
    peak_i = int(np.argmax(lv))
    peak = float(lv[peak_i])
    decayed = np.nonzero((lv <= 0.1 * peak) & (np.arange(len(lv)) > peak_i))[0]
    if not (peak > 0 and len(decayed)):
        return None
    dx = float(lx[decayed[0]])
    df = (dx - c.x[0]) / c.span
    if not 0.05 <= df <= 0.6:
        return None
    rate_before = 2.0 * (c.level(df - 0.1, df - 0.05)[0] - c.level(df - 0.05, df)[0])  # per 10% of the run
    rate_end = 0.5 * (c.level(0.7, 0.8)[0] - t.final)
    near_zero = abs(t.final) < 1e-3 * abs(c.start)  # fitted the data: converged, not stuck
    if rate_before > t.tol and rate_end < 0.1 * rate_before and not near_zero:
        return _verdict("underfitting", [
            f"LR fell to 10% of its peak {peak:.3g} at {c.at(dx)}",
            f"the training loss was still falling just before: -{rate_before:.3g} per 10% of the run",
            f"over the last 30% it falls only {max(rate_end, 0.0):.3g} per 10% of the run, "
            f"stuck near {t.final:.4g}",
        ])
    return None


def _not_converged(c: _Curve, t: _Tail) -> Diagnosis | None:
    """Not converged: the loss still falls at the end at more than 5% of the progress made
    (``start - final``) per 10% of the run, measured between the windows 70-80% and 90-100% of the run,
    and by more than 3 standard errors of a window mean: the run stopped while still learning. A run
    that levels off (most of its progress made early, or a schedule decayed to ~0) is not flagged."""
    before, n = c.level(0.7, 0.8)
    drop = before - t.final
    progress = c.start - t.final
    rate = 0.5 * drop  # per 10% of the run
    if progress > 0 and rate > 0.05 * progress and drop > 3.0 * c.noise * math.sqrt(2.0 / max(n, 1)):
        return _verdict("not_converged", [
            f"the training loss still falls at the end: from {before:.4g} (70-80% of the run) to "
            f"{t.final:.4g} (last 10%), {100 * rate / progress:.0f}% of the progress made per 10% of the run",
            t.evidence_falling,
        ])
    return None


def _plateau_or_healthy(c: _Curve, t: _Tail, lrs: Series | None, flat_fraction: float) -> Diagnosis:
    """Plateau: a flat tail at an LR not below 10% of its peak (or no LR); the same after decay is a
    converged, healthy run; a falling tail is healthy."""
    if lrs is not None and len(lrs[1]) >= 2:
        lx, lv = lrs
        peak = float(lv[int(np.argmax(lv))])
        lr_tail = _interp(lx, lv, c.x[0] + (1.0 - flat_fraction) * c.span)
        if t.flat and lr_tail > 0.1 * peak:
            return _verdict("plateau", [t.evidence_flat, f"at an LR of {lr_tail:.3g} (peak {peak:.3g}), not decayed"])
        if t.flat:
            return _verdict("healthy", [t.evidence_flat, f"after the LR decayed to {lr_tail:.3g}: converged"])
        return _verdict("healthy", [t.evidence_falling])
    if t.flat:
        return _verdict("plateau", [t.evidence_flat, "no LR in the metrics: premature decay cannot be told apart"])
    return _verdict("healthy", [t.evidence_falling])


def diagnose(
    train_loss: Sequence[float],
    val_loss: Sequence[float] | None = None,
    lr: Sequence[float] | None = None,
    *,
    steps: Sequence[float] | None = None,
    val_steps: Sequence[float] | None = None,
    lr_steps: Sequence[float] | None = None,
    flat_fraction: float = 0.4,
    rel_tol: float = 0.05,
) -> Diagnosis:
    """Classify a run from its curves (each with its own steps, default ``0..n-1``).

    Rules, checked in this order on curves smoothed over ~5% of their points:

    * divergence: a non-finite loss, or the training loss rose from its minimum by more than half of
      the progress made (``start - min``) and by more than 3 noise standard deviations;
    * overfitting: the validation loss rose from its minimum (before 85% of the run) by more than 10%
      of its own progress and 2% of its level, while the training loss kept falling;
    * levels are means of the raw training loss over windows given as fractions of the run; the
      tolerance is ``tol = max(rel_tol * |final level|, 3 standard errors of a window mean)``;
    * underfitting (premature decay): the LR fell below 10% of its peak in the first 60% of the run,
      the loss was still falling just before (by more than ``tol`` per 10% of the run) and over the
      last 30% of the run it falls less than a tenth as fast, at a level above 0.1% of the start;
    * plateau: over the last ``flat_fraction`` of the run the level fell by less than ``tol``, at an
      LR not below 10% of its peak (or with no LR in the metrics); with a decayed LR the same is a
      converged, healthy run;
    * not converged: the level still falls at the end (from 70-80% to 90-100% of the run) by more than
      5% of the progress made (``start - final``) per 10% of the run, beyond the noise: train longer;
    * healthy otherwise.
    """
    check_range("flat_fraction", flat_fraction, 0.0, 1.0, low_open=True)
    check_range("rel_tol", rel_tol, 0.0, 1.0)
    tr = _series(steps, train_loss)
    if tr is None or len(tr[1]) < 5:
        raise ValueError(f"train_loss must have at least 5 points, got {0 if tr is None else len(tr[1])}")
    va = _series(val_steps, val_loss)
    lrs = _series(lr_steps, lr)
    found = _not_finite(tr, va)
    if found is not None:
        return found
    c = _Curve.of(tr)
    found = _diverged(c) or _overfitting(c, va)
    if found is not None:
        return found
    t = _tail(c, flat_fraction, rel_tol)
    if lrs is not None and len(lrs[1]) >= 2:
        found = _premature_decay(c, t, lrs)
        if found is not None:
            return found
    if not t.flat:
        found = _not_converged(c, t)
        if found is not None:
            return found
    return _plateau_or_healthy(c, t, lrs, flat_fraction)


def _verdict(name: str, evidence: list[str]) -> Diagnosis:
    return Diagnosis(name, tuple(evidence), REMEDIES_BY_VERDICT[name])


def _pick(records: Sequence[Mapping[str, Any]], keys: Sequence[str], wanted: str | None) -> str | None:
    if wanted is not None:
        if not any(wanted in r for r in records):
            keys = sorted({k for r in records for k in r})
            raise ValueError(f"key {wanted!r} not found in the metrics (keys: {keys})")
        return wanted
    for k in keys:
        if any(r.get(k) is not None for r in records):
            return k
    return None


def _column(records: Sequence[Mapping[str, Any]], key: str, step_key: str | None) -> Series:
    xs, ys = [], []
    for i, r in enumerate(records):
        if key not in r or isinstance(r[key], str):
            continue
        value = math.nan if r[key] is None else r[key]  # null is how MetricsWriter stores NaN
        xs.append(float(r[step_key]) if step_key and r.get(step_key) is not None else float(i))
        ys.append(float(value))
    return np.asarray(xs), np.asarray(ys)


def diagnose_records(
    records: Sequence[Mapping[str, Any]],
    *,
    train_key: str | None = None,
    val_key: str | None = None,
    step_key: str | None = None,
    lr_key: str | None = None,
) -> Diagnosis:
    """:func:`diagnose` on metric records (``metrics.jsonl``/``.csv`` rows); the keys are found among
    ``step``/``round``/``epoch``, ``train_loss``/``loss``, ``val_loss``/``test_loss``... and ``lr``.
    Records without a key are skipped for that curve; a ``null`` value counts as NaN."""
    if not records:
        raise ValueError("metrics must hold at least one record, got none")
    sk = _pick(records, STEP_KEYS, step_key)
    tk = _pick(records, TRAIN_KEYS, train_key)
    if tk is None:
        raise ValueError(f"no training loss in the metrics: expected one of {list(TRAIN_KEYS)}")
    vk = _pick(records, VAL_KEYS, val_key)
    lk = _pick(records, LR_KEYS, lr_key)
    tx, ty = _column(records, tk, sk)
    kw: dict[str, Any] = {"steps": tx}
    val = lr = None
    if vk is not None:
        vx, val = _column(records, vk, sk)
        kw["val_steps"] = vx
    if lk is not None:
        lx, lr = _column(records, lk, sk)
        kw["lr_steps"] = lx
    d = diagnose(ty, val, lr, **kw)
    used = f"columns: train={tk!r}" + (f", val={vk!r}" if vk else "") + (f", lr={lk!r}" if lk else "") + (
        f", step={sk!r}" if sk else "")
    used += f"; {len(ty)} training points"
    return dataclasses.replace(d, evidence=(*d.evidence, used))
