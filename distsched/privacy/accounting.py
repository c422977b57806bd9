"""Privacy accounting over schedules: epsilon for a history of ``(noise_multiplier, sample_rate, steps)``
segments, computed by Opacus' own accountants (``rdp``, ``prv``, ``gdp``).

A history is the run-length encoding of a DP-SGD run: segment ``(sigma, q, n)`` means ``n`` steps of
the Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma`` and sample rate ``q``.
This is exactly Opacus' ``IAccountant.history``; we hand it to the real accountant and read its
epsilon. References: Mironov et al. 2019 (RDP of the sampled Gaussian mechanism), Gopi et al. 2021
(PRV accountant), Dong et al. 2019 (GDP, a CLT approximation valid for one constant (sigma, q)).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis import rdp as _rdp_analysis

from distsched._checks import check_choice, check_int, check_non_negative, check_range

#: accountant names, as in ``opacus.accountants.create_accountant``.
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "gdp")


class Segment(NamedTuple):
    """``steps`` DP-SGD steps with one noise multiplier ``sigma`` and one sample rate ``q``."""

    noise_multiplier: float
    sample_rate: float
    steps: int = 1


def check_delta(delta: float) -> float:
    """delta in (0, 1)."""
    return check_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)


def check_sample_rate(sample_rate: float, name: str = "sample_rate") -> float:
    """q in (0, 1]."""
    return check_range(name, sample_rate, 0.0, 1.0, low_open=True)


def check_accountant(accountant: str) -> str:
    return check_choice("accountant", accountant, ACCOUNTANTS)


#: RDP orders: Opacus' defaults (1.1 .. 63) and larger ones. RDP converts to epsilon with a term
#: ``~log(1 / delta) / (alpha - 1)``, so the largest order sets a floor on the epsilon RDP can certify
#: (about 0.103 at delta = 1e-5 with Opacus' orders); up to 1024 it is about 0.004. (Opacus' integer-order
#: formula overflows to inf beyond ~1030, so larger orders would add nothing.)
RDP_ORDERS: tuple[float, ...] = (*RDPAccountant.DEFAULT_ALPHAS, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024)

#: Noise multipliers the accountants are asked about. Below ``MIN_NOISE`` a step protects nothing that
#: matters and Opacus' analysis under- or overflows: it is accounted as no noise (``epsilon = inf``, a
#: valid upper bound). Above ``MAX_NOISE`` Opacus' analysis overflows, and no run needs such noise.
MIN_NOISE, MAX_NOISE = 1e-3, 1e4


def as_segment(segment: Segment | Sequence[float]) -> Segment:
    """A validated :class:`Segment` from a ``(sigma, q)`` or ``(sigma, q, steps)`` sequence."""
    if len(segment) not in (2, 3):
        raise ValueError(f"segment must be (noise_multiplier, sample_rate[, steps]), got {tuple(segment)!r}")
    sigma = check_non_negative("noise_multiplier", segment[0])
    if sigma > MAX_NOISE:
        raise ValueError(f"noise_multiplier must be in [0, {MAX_NOISE:g}], got {segment[0]!r}")
    q = check_sample_rate(segment[1])
    steps = check_int("steps", segment[2], 0) if len(segment) == 3 else 1
    return Segment(sigma, q, steps)


def compress(history: Iterable[Segment | Sequence[float]]) -> list[Segment]:
    """Validated run-length encoding: consecutive equal ``(sigma, q)`` merged, empty segments dropped."""
    out: list[Segment] = []
    for raw in history:
        seg = as_segment(raw)
        if seg.steps == 0:
            continue
        if out and out[-1].noise_multiplier == seg.noise_multiplier and out[-1].sample_rate == seg.sample_rate:
            out[-1] = Segment(seg.noise_multiplier, seg.sample_rate, out[-1].steps + seg.steps)
        else:
            out.append(seg)
    return out


def opacus_accountant(mechanism: str, history: Iterable[Segment | Sequence[float]] = ()) -> IAccountant:
    """A real Opacus accountant (``RDPAccountant``, ``PRVAccountant``, ``GaussianAccountant``) holding
    ``history``. ``gdp`` accepts only one constant ``(sigma, q)``, as Opacus' own ``step`` enforces."""
    check_accountant(mechanism)
    segments = compress(history)
    if mechanism == "rdp":
        acc: IAccountant = RDPAccountant()
        acc.DEFAULT_ALPHAS = list(RDP_ORDERS)  # get_epsilon() uses them (Opacus reads self.DEFAULT_ALPHAS)
    elif mechanism == "prv":
        acc = PRVAccountant()
    else:
        if len(segments) > 1:
            raise ValueError(
                f"accountant 'gdp' needs one constant (noise_multiplier, sample_rate), got {len(segments)} "
                "different segments; use 'rdp' or 'prv'"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "GDP accounting is experimental"
            acc = GaussianAccountant()
    acc.history = [tuple(s) for s in segments]
    return acc


def epsilon(
    history: Iterable[Segment | Sequence[float]],
    delta: float,
    accountant: str = "rdp",
    *,
    eps_error: float = 0.01,
) -> float:
    """Epsilon spent by ``history`` at ``delta``, from Opacus' ``accountant``.

    ``eps_error`` is the PRV accountant's discretisation error; Opacus returns the upper bound of its
    estimate, so the answer stays conservative. A segment with ``sigma < MIN_NOISE`` (0 included) gives
    ``inf``. Never below 0: RDP's conversion (Balle et al. 2020, Opacus' ``get_privacy_spent``) goes
    below 0 at tiny RDP (sigma ~300, delta 1e-3: -0.0009); a bound ``eps < 0`` implies ``eps = 0``.
    """
    check_delta(delta)
    check_accountant(accountant)
    segments = compress(history)
    if not segments:
        return 0.0
    if any(s.noise_multiplier < MIN_NOISE for s in segments):
        return math.inf
    acc = opacus_accountant(accountant, segments)
    if accountant == "prv":
        need = prv_memory_bytes(segments, delta, eps_error)
        if need > PRV_MEMORY_LIMIT:
            raise AccountingTooLarge(
                f"accountant 'prv' would need ~{need / 2**30:.3g} GiB for this history (limit "
                f"{PRV_MEMORY_LIMIT / 2**30:g} GiB: little noise or many steps widen its domain); use accountant "
                "'rdp' (an upper bound at any size) or more noise"
            )
        return max(0.0, float(acc.get_epsilon(delta=delta, eps_error=eps_error)))
    if accountant == "gdp":
        return _gdp_epsilon(segments[0], delta)
    return max(0.0, float(acc.get_epsilon(delta=delta)))


def _gdp_epsilon(seg: Segment, delta: float) -> float:
    """Opacus' GDP epsilon (Dong et al. 2019: ``mu = q sqrt(T (e^{1/sigma^2} - 1))``, ``eps`` the root of
    ``delta(eps; mu) = delta`` on ``[0, 500]``). Outside that bracket Opacus' root finder raises: ``0``
    when ``delta(0; mu) <= delta`` already (tiny mu, e.g. sigma 312), ``inf`` when even ``eps = 500`` is
    not enough (both are valid bounds)."""
    from opacus.accountants.analysis import gdp

    mu = gdp.compute_mu_poisson(steps=seg.steps, noise_multiplier=seg.noise_multiplier,
                                sample_rate=seg.sample_rate)
    if gdp.delta_eps_mu(eps=0.0, mu=mu) <= delta:
        return 0.0
    if gdp.delta_eps_mu(eps=500.0, mu=mu) > delta:
        return math.inf
    return float(gdp.eps_from_mu(mu=mu, delta=delta))


class AccountingTooLarge(ValueError):
    """The PRV accountant would need more than :data:`PRV_MEMORY_LIMIT` for this history."""


#: the most memory the PRV accountant may allocate for one epsilon.
PRV_MEMORY_LIMIT = 1 << 30


def prv_memory_bytes(segments: Sequence[Segment], delta: float, eps_error: float = 0.01) -> float:
    """Estimated peak memory of Opacus' ``PRVAccountant.get_epsilon`` on ``segments``: its domain has
    ``2 L / mesh`` points (``L`` from ``compute_safe_domain_size``, ``mesh = eps_error / sqrt(T log(12 /
    delta_error) / 2)``, ``delta_error = delta / 1000``, as in Opacus), and it holds about 16 bytes per point
    plus 60 per point and segment (measured: 76 bytes per point with one segment, 302 with five)."""
    from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size

    delta_error = delta / 1000
    prvs = [PoissonSubsampledGaussianPRV(s.sample_rate, s.noise_multiplier) for s in segments]
    steps = [s.steps for s in segments]
    size = compute_safe_domain_size(prvs=prvs, max_self_compositions=steps, eps_error=eps_error,
                                    delta_error=delta_error)
    mesh = eps_error / math.sqrt(sum(steps) * math.log(12 / delta_error) / 2)
    return 2.0 * size / mesh * (16 + 60 * len(segments))


@functools.lru_cache(maxsize=4096)
def _unit_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus' RDP curve of one step at :data:`RDP_ORDERS` (``compute_rdp`` is linear in steps)."""
    curve = np.asarray(
        _rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS),
        dtype=np.float64,
    )
    curve.setflags(write=False)
    return curve


class Accountant:
    """Records DP-SGD steps as segments and reports epsilon through an Opacus accountant.

    ``state_dict()`` has Opacus' keys (``mechanism``, ``history``) so that the history can be saved in
    every checkpoint and restored on resume. For ``rdp`` the RDP curve of the history is kept as a
    running sum (RDP composes additively over steps, Mironov 2017), so ``epsilon_after`` costs one
    segment, however long the history.
    """

    def __init__(
        self,
        mechanism: str = "rdp",
        history: Iterable[Segment | Sequence[float]] = (),
        *,
        eps_error: float = 0.01,
    ) -> None:
        self.mechanism = check_accountant(mechanism)
        self.eps_error = check_range("eps_error", eps_error, 0.0, 1.0, low_open=True)
        self._history: list[Segment] = []
        self._orders = np.asarray(RDP_ORDERS, dtype=np.float64)
        self._rdp_closed = np.zeros_like(self._orders)  # RDP curve of all segments but the last
        self._cache: dict[tuple[Any, ...], float] = {}
        #: bumped whenever the history is replaced (not when it grows), so callers can cache per history prefix.
        self.generation = 0
        for seg in compress(history):
            self.step(seg.noise_multiplier, seg.sample_rate, seg.steps)

    # -- recording --------------------------------------------------------------------------
    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record ``steps`` steps of ``(noise_multiplier, sample_rate)``."""
        last = self._history[-1] if self._history else None
        if (
            last is not None
            and type(steps) is int
            and steps > 0
            and last.noise_multiplier == noise_multiplier
            and last.sample_rate == sample_rate
        ):  # fast path: more steps of the last (already validated) segment
            self._history[-1] = Segment(last.noise_multiplier, last.sample_rate, last.steps + steps)
            return
        seg = as_segment((noise_multiplier, sample_rate, steps))
        if seg.steps == 0:
            return
        if self.mechanism == "gdp" and last is not None and last[:2] != seg[:2]:
            raise ValueError(
                "accountant 'gdp' needs one constant (noise_multiplier, sample_rate): got "
                f"{seg[:2]} after {tuple(last[:2])}; use 'rdp' or 'prv'"
            )
        if last is not None and last.noise_multiplier == seg.noise_multiplier and last.sample_rate == seg.sample_rate:
            self._history[-1] = Segment(last.noise_multiplier, last.sample_rate, last.steps + seg.steps)
            return
        if last is not None and self.mechanism == "rdp":
            self._rdp_closed = self._rdp_closed + self._segment_rdp(last)
        self._history.append(seg)

    def _rdp_curve(self) -> np.ndarray:
        """RDP curve of the whole history: the closed segments' running sum plus the open last segment."""
        if not self._history:
            return self._rdp_closed
        return self._rdp_closed + self._segment_rdp(self._history[-1])

    def optimizer_hook(self, sample_rate: float) -> Callable[[Any], None]:
        """A hook for Opacus' ``DPOptimizer.attach_step_hook``: each real (not skipped) step records the
        optimizer's current ``noise_multiplier``, so a noise schedule that changes it is seen."""
        q = check_sample_rate(sample_rate)

        def hook(optimizer: Any) -> None:
            self.step(float(optimizer.noise_multiplier), min(1.0, q * optimizer.accumulated_iterations))

        return hook

    # -- reading ----------------------------------------------------------------------------
    @property
    def history(self) -> list[Segment]:
        """A copy of the recorded segments."""
        return list(self._history)

    @property
    def num_segments(self) -> int:
        return len(self._history)

    @property
    def last_segment(self) -> Segment | None:
        return self._history[-1] if self._history else None

    @property
    def steps(self) -> int:
        """Total number of recorded steps."""
        return sum(s.steps for s in self._history)

    def __len__(self) -> int:
        return self.steps

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta``."""
        if self.mechanism == "rdp":
            return self.epsilon_after(delta, Segment(1.0, 1.0, 0))
        return self._epsilon(self._history, delta)

    def epsilon_after(self, delta: float, segment: Segment | Sequence[float]) -> float:
        """Epsilon at ``delta`` if ``segment`` were recorded next (nothing is recorded)."""
        seg = as_segment(segment)
        if self.mechanism == "rdp":
            check_delta(delta)
            if seg.steps > 0 and seg.noise_multiplier == 0.0:
                return math.inf
            if any(s.noise_multiplier == 0.0 for s in self._history):
                return math.inf
            return self._rdp_to_epsilon(self._rdp_curve() + self._segment_rdp(seg), delta)
        return self._epsilon([*self._history, seg], delta)

    def to_opacus(self) -> IAccountant:
        """A real Opacus accountant holding this history (e.g. for ``PrivacyEngine.accountant``)."""
        return opacus_accountant(self.mechanism, self._history)

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"mechanism", "history"}`` with the history as plain lists (JSON/torch.save friendly)."""
        return {
            "mechanism": self.mechanism,
            "history": [[float(s.noise_multiplier), float(s.sample_rate), int(s.steps)] for s in self._history],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace the history by the saved one; the mechanism must match."""
        if not state_dict or "history" not in state_dict or "mechanism" not in state_dict:
            raise ValueError("accountant state_dict must have the keys 'mechanism' and 'history'")
        if state_dict["mechanism"] != self.mechanism:
            raise ValueError(
                f"accountant state_dict mechanism must be {self.mechanism!r}, got {state_dict['mechanism']!r}"
            )
        self._history = []
        self._rdp_closed = np.zeros_like(self._orders)
        self.generation += 1
        for seg in compress(state_dict["history"]):
            self.step(seg.noise_multiplier, seg.sample_rate, seg.steps)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], *, eps_error: float = 0.01) -> Accountant:
        acc = cls(str(state_dict.get("mechanism", "")), eps_error=eps_error)
        acc.load_state_dict(state_dict)
        return acc

    def __repr__(self) -> str:
        return f"Accountant(mechanism={self.mechanism!r}, steps={self.steps}, segments={len(self._history)})"

    # -- internals --------------------------------------------------------------------------
    def _segment_rdp(self, seg: Segment) -> np.ndarray:
        if seg.steps == 0:
            return np.zeros_like(self._orders)
        if seg.noise_multiplier < MIN_NOISE:
            return np.full_like(self._orders, np.inf)
        return _unit_rdp(seg.noise_multiplier, seg.sample_rate) * seg.steps

    def _rdp_to_epsilon(self, rdp: np.ndarray, delta: float) -> float:
        if not np.any(rdp):
            return 0.0
        if not np.all(np.isfinite(rdp)):
            return math.inf
        eps, _ = _rdp_analysis.get_privacy_spent(orders=self._orders, rdp=rdp, delta=delta)
        return max(0.0, float(eps))  # a bound below 0 implies the bound 0 (see :func:`epsilon`)

    def _epsilon(self, history: Sequence[Segment], delta: float) -> float:
        check_delta(delta)
        key = (delta, tuple(history))
        if key not in self._cache:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = epsilon(history, delta, self.mechanism, eps_error=self.eps_error)
        return self._cache[key]


def epsilon_curve(
    history: Iterable[Segment | Sequence[float]],
    delta: float,
    accountant: str = "rdp",
    *,
    points: int = 50,
    eps_error: float = 0.01,
) -> tuple[list[int], list[float]]:
    """Epsilon spent after each of up to ``points`` evenly spaced step counts of ``history`` (last step included),
    for plots of epsilon over steps."""
    check_int("points", points, 1)
    segments = compress(history)
    total = sum(s.steps for s in segments)
    if total == 0:
        return [0], [0.0]
    marks = sorted({max(1, round(total * (i + 1) / points)) for i in range(min(points, total))})
    acc = Accountant(accountant, eps_error=eps_error)
    xs, ys = [], []
    done, idx, pos = 0, 0, 0  # steps recorded; current segment; steps recorded inside it
    for mark in marks:
        while done < mark:
            seg = segments[idx]
            take = min(seg.steps - pos, mark - done)
            acc.step(seg.noise_multiplier, seg.sample_rate, take)
            done, pos = done + take, pos + take
            if pos == seg.steps:
                idx, pos = idx + 1, 0
        xs.append(mark)
        ys.append(acc.epsilon(delta))
    return xs, ys
