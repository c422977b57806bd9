"""Planner: given all but one of (target epsilon, delta, sample rate or batch size, steps or epochs,
noise multiplier or the level of a noise schedule), solve for the missing one.

Every answer is conservative (``epsilon <= target_epsilon``) and tight: for the noise multiplier,
``target_epsilon - epsilon <= tol`` (default 1e-3; Opacus' ``get_noise_multiplier`` stops at 0.01);
for steps and batch size, the largest integer that fits. Continuous solves bracket the root, then run
Illinois regula falsi on ``log sigma`` (Dowell & Jarratt 1971), which keeps a bracket whose feasible end
is the answer; integer solves bracket, then interpolate with a bisection safeguard. Epsilon always
comes from Opacus' accountants (:func:`distsched.privacy.epsilon`). The calibration API follows
jax_privacy's ``calibrate_noise_multiplier`` / ``calibrate_num_updates`` / ``calibrate_batch_size``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from distsched._checks import check_choice, check_int, check_non_negative, check_positive, check_range
from distsched.privacy.accounting import (  # MIN/MAX_NOISE: the planner's search range
    MAX_NOISE,
    MIN_NOISE,
    AccountingTooLarge,
    Segment,
    check_accountant,
    check_delta,
    check_sample_rate,
    epsilon,
)
from distsched.privacy.noise import NoiseSchedule, noise_schedule_from_spec

SOLVE: tuple[str, ...] = ("noise", "steps", "batch", "epsilon")
#: the noise multiplier search range.

#: the step-count search limit.
MAX_STEPS = 10**8


@dataclasses.dataclass(frozen=True)
class Plan:
    """A solved DP-SGD plan; ``noise_multiplier`` is the schedule's level (its value at step 0 for
    every shape but ``piecewise``, where it multiplies ``factors``)."""

    noise_multiplier: float
    epsilon: float
    delta: float
    steps: int
    sample_rate: float
    accountant: str
    solved: str
    noise_schedule: NoiseSchedule
    target_epsilon: float | None = None
    batch_size: int | None = None
    dataset_size: int | None = None
    evaluations: int = 0

    @property
    def epochs(self) -> float:
        """``steps * sample_rate``: expected passes over the data."""
        return self.steps * self.sample_rate

    def history(self) -> list[Segment]:
        """The accountant history this plan spends."""
        return self.noise_schedule.segments(self.steps, self.sample_rate)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping (``distsched plan --json``)."""
        return {
            "noise_multiplier": self.noise_multiplier,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "steps": self.steps,
            "sample_rate": self.sample_rate,
            "accountant": self.accountant,
            "solved": self.solved,
            "target_epsilon": self.target_epsilon,
            "batch_size": self.batch_size,
            "dataset_size": self.dataset_size,
            "epochs": self.epochs,
            "noise_schedule": type(self.noise_schedule).__name__,
            "noise_schedule_params": {
                k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.noise_schedule).items()
            },
            "evaluations": self.evaluations,
        }


def steps_for_epochs(epochs: float, sample_rate: float) -> int:
    """``ceil(epochs / q)`` (a float quotient within 1e-9 of an integer counts as that integer; Opacus'
    ``int(epochs / q)`` rounds 90 / 0.04 down to 2249, we give 2250)."""
    check_positive("epochs", epochs)
    ratio = epochs / sample_rate
    nearest = round(ratio)
    return max(1, int(nearest if abs(ratio - nearest) <= 1e-9 * max(1.0, ratio) else math.ceil(ratio)))


class _Epsilon:
    """Counted epsilon of the noise-schedule shape ``noise_schedule`` at level ``sigma`` over ``total`` steps of
    rate ``q`` (continuous shapes hold each value ``interval`` steps, default ``floor(1 / q)``). With
    ``too_large_is_infeasible``, a history beyond the PRV memory limit (little noise, many steps) counts as
    ``inf``: the searches then stay on the side with more noise or fewer steps."""

    def __init__(self, delta: float, accountant: str, eps_error: float, noise_schedule: str | NoiseSchedule | None,
                 interval: int | None, too_large_is_infeasible: bool = True) -> None:
        self.delta, self.accountant, self.eps_error = delta, accountant, eps_error
        self.noise_schedule, self.interval = noise_schedule, interval
        self.too_large_is_infeasible = too_large_is_infeasible
        self.calls = 0

    def shape(self, total: int, q: float, sigma: float) -> NoiseSchedule:
        hold = self.interval if self.interval is not None else max(1, int(1.0 / q))
        check_int("interval", hold, 1)
        return noise_schedule_from_spec(self.noise_schedule, total_steps=total, interval=hold).with_sigma(sigma)

    def __call__(self, sched: NoiseSchedule, total: int, q: float) -> float:
        self.calls += 1
        try:
            return epsilon(sched.segments(total, q), self.delta, self.accountant, eps_error=self.eps_error)
        except AccountingTooLarge:
            if not self.too_large_is_infeasible:
                raise
            return math.inf

    def at(self, total: int, q: float, sigma: float) -> float:
        return self(self.shape(total, q, sigma), total, q)


def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int,
    noise_schedule: str | NoiseSchedule | None = None, accountant: str = "rdp", tol: float = 1e-3,
    interval: int | None = None, eps_error: float = 0.01, batch_size: int | None = None,
    dataset_size: int | None = None,
) -> Plan:
    """The noise level ``sigma`` with ``target - tol <= epsilon(sigma) <= target`` (epsilon decreasing in sigma):
    bracket in ``log sigma`` from the moments-accountant guess, then Illinois regula falsi."""
    eps = _Epsilon(delta, accountant, eps_error, noise_schedule, interval)
    base = eps.shape(steps, sample_rate, 1.0)
    guess = _noise_guess(target_epsilon, sample_rate, steps, delta)
    # with huge noise, RDP's epsilon is its conversion floor (largest order, delta), whatever the steps
    hint = ("use a larger delta or accountant 'prv' (RDP's conversion floor)" if accountant == "rdp"
            else "take fewer steps")
    sigma, value = _solve_noise(lambda s: eps(base.with_sigma(s), steps, sample_rate), target_epsilon, tol, guess, hint)
    return Plan(sigma, value, delta, steps, sample_rate, accountant, "noise", base.with_sigma(sigma), target_epsilon,
                batch_size, dataset_size, eps.calls)


def calibrate_steps(
    *, target_epsilon: float, delta: float, sample_rate: float, noise_multiplier: float,
    noise_schedule: str | NoiseSchedule | None = None, accountant: str = "rdp", interval: int | None = None,
    eps_error: float = 0.01, batch_size: int | None = None, dataset_size: int | None = None,
) -> Plan:
    """The largest number of steps whose epsilon is at most ``target_epsilon`` (epsilon increasing in steps)."""
    eps = _Epsilon(delta, accountant, eps_error, noise_schedule, interval)
    q = sample_rate

    def eps_of_steps(n: int) -> float:
        return eps.at(n, q, noise_multiplier)

    first = eps_of_steps(1)
    if first > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is not reachable: one step with noise_multiplier={noise_multiplier}, "
            f"sample_rate={q} already spends epsilon={first:.6g}; reachable: target_epsilon >= {first:.6g}"
        )
    n = _max_integer(eps_of_steps, target_epsilon, 1, first, MAX_STEPS)
    value = eps_of_steps(n)
    return Plan(noise_multiplier, value, delta, n, q, accountant, "steps", eps.shape(n, q, noise_multiplier),
                target_epsilon, batch_size, dataset_size, eps.calls)


def calibrate_batch(
    *, target_epsilon: float, delta: float, dataset_size: int, noise_multiplier: float, steps: int | None = None,
    epochs: float | None = None, noise_schedule: str | NoiseSchedule | None = None, accountant: str = "rdp",
    interval: int | None = None, eps_error: float = 0.01,
) -> Plan:
    """The largest expected batch size ``B`` (``q = B / N``) whose epsilon is at most ``target_epsilon`` for
    ``steps`` steps, or for ``epochs`` epochs (``steps = ceil(epochs N / B)``)."""
    eps = _Epsilon(delta, accountant, eps_error, noise_schedule, interval)
    n_data = dataset_size

    def total_for(b: int) -> int:
        return steps if steps is not None else steps_for_epochs(epochs, b / n_data)  # type: ignore[arg-type]

    def eps_of_batch(b: int) -> float:
        return eps.at(total_for(b), b / n_data, noise_multiplier)

    first = eps_of_batch(1)
    if first > target_epsilon:
        raise ValueError(
            f"target_epsilon={target_epsilon} is not reachable: batch_size=1 (sample_rate={1 / n_data:.3g}) with "
            f"noise_multiplier={noise_multiplier} already spends epsilon={first:.6g}; "
            f"reachable: target_epsilon >= {first:.6g}"
        )
    b = _max_integer(eps_of_batch, target_epsilon, 1, first, n_data)
    q, total = b / n_data, total_for(b)
    value = eps_of_batch(b)
    return Plan(noise_multiplier, value, delta, total, q, accountant, "batch", eps.shape(total, q, noise_multiplier),
                target_epsilon, b, n_data, eps.calls)


def calibrate_epsilon(
    *, delta: float, sample_rate: float, steps: int, noise_multiplier: float,
    noise_schedule: str | NoiseSchedule | None = None, accountant: str = "rdp", interval: int | None = None,
    eps_error: float = 0.01, batch_size: int | None = None, dataset_size: int | None = None,
) -> Plan:
    """Epsilon spent by ``steps`` steps of the schedule at level ``noise_multiplier`` (a history too large for
    PRV's memory limit is refused)."""
    eps = _Epsilon(delta, accountant, eps_error, noise_schedule, interval, too_large_is_infeasible=False)
    sched = eps.shape(steps, sample_rate, noise_multiplier)
    value = eps(sched, steps, sample_rate)
    return Plan(noise_multiplier, value, delta, steps, sample_rate, accountant, "epsilon", sched, None, batch_size,
                dataset_size, eps.calls)


def plan(
    *,
    delta: float,
    target_epsilon: float | None = None,
    sample_rate: float | None = None,
    batch_size: int | None = None,
    dataset_size: int | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    noise_multiplier: float | None = None,
    noise_schedule: str | NoiseSchedule | None = None,
    accountant: str = "rdp",
    solve: str | None = None,
    tol: float = 1e-3,
    interval: int | None = None,
    eps_error: float = 0.01,
) -> Plan:
    """Solve for the one missing quantity (``solve`` = ``noise``, ``steps``, ``batch`` or ``epsilon``;
    inferred when ``None``): validates the arguments, then calls :func:`calibrate_noise`,
    :func:`calibrate_steps`, :func:`calibrate_batch` or :func:`calibrate_epsilon`. Sample rate: ``sample_rate``
    or ``batch_size / dataset_size`` (Poisson sampling with expected batch size B). Length: ``steps`` or
    ``epochs`` (``steps = ceil(epochs / q)``). ``noise_schedule`` is a spec (see
    :func:`noise_schedule_from_spec`) or a shape whose level is solved or set by ``noise_multiplier``;
    ``interval`` (default: steps per epoch, ``floor(1/q)``) is how long continuous shapes hold each value.

    Raises ``ValueError`` naming the parameter for invalid or inconsistent input, and, for a target that
    cannot be met, says what is reachable.
    """
    solve = _check_plan_args(delta, target_epsilon, noise_multiplier, steps, epochs, sample_rate, batch_size,
                             dataset_size, accountant, solve, tol)
    common: dict[str, Any] = {"delta": delta, "noise_schedule": noise_schedule, "accountant": accountant,
                              "interval": interval, "eps_error": eps_error}
    if solve == "batch":
        assert target_epsilon is not None and noise_multiplier is not None and dataset_size is not None
        return calibrate_batch(target_epsilon=target_epsilon, dataset_size=dataset_size,
                               noise_multiplier=noise_multiplier, steps=steps, epochs=epochs, **common)
    q, batch_size = _resolve_sample_rate(sample_rate, batch_size, dataset_size)
    common.update(batch_size=batch_size, dataset_size=dataset_size, sample_rate=q)
    if solve == "steps":
        assert target_epsilon is not None and noise_multiplier is not None
        return calibrate_steps(target_epsilon=target_epsilon, noise_multiplier=noise_multiplier, **common)
    total = steps if steps is not None else steps_for_epochs(epochs, q)  # type: ignore[arg-type]
    if solve == "noise":
        assert target_epsilon is not None
        return calibrate_noise(target_epsilon=target_epsilon, steps=total, tol=tol, **common)
    assert noise_multiplier is not None
    return calibrate_epsilon(steps=total, noise_multiplier=noise_multiplier, **common)


def _check_plan_args(
    delta: float, target_epsilon: float | None, noise_multiplier: float | None, steps: int | None,
    epochs: float | None, sample_rate: float | None, batch_size: int | None, dataset_size: int | None,
    accountant: str, solve: str | None, tol: float,
) -> str:
    """Validate :func:`plan`'s arguments for the quantity solved for (inferred when ``solve`` is None);
    returns that quantity."""
    check_delta(delta)
    check_accountant(accountant)
    check_range("tol", tol, 0.0, 1.0, low_open=True)
    if solve is None:
        solve = _infer_solve(target_epsilon, noise_multiplier, steps, epochs, sample_rate, batch_size)
    check_choice("solve", solve, SOLVE)
    if solve != "epsilon":
        if target_epsilon is None:
            raise ValueError(f"target_epsilon is required to solve for {solve}")
        check_positive("target_epsilon", target_epsilon)
    elif target_epsilon is not None:
        raise ValueError("target_epsilon must be left out to solve for epsilon")
    if solve == "noise":
        if noise_multiplier is not None:
            raise ValueError("noise_multiplier must be left out to solve for noise (it is the unknown)")
    elif noise_multiplier is None:
        raise ValueError(f"noise_multiplier is required to solve for {solve}")
    else:
        check_range("noise_multiplier", noise_multiplier, MIN_NOISE, MAX_NOISE)
    if dataset_size is not None:
        check_int("dataset_size", dataset_size, 1)
    if solve == "batch":
        if sample_rate is not None or batch_size is not None:
            raise ValueError("sample_rate and batch_size must be left out to solve for batch")
        if dataset_size is None:
            raise ValueError("dataset_size is required to solve for batch")
    else:
        _resolve_sample_rate(sample_rate, batch_size, dataset_size)
    if solve == "steps":
        if steps is not None or epochs is not None:
            raise ValueError("steps and epochs must be left out to solve for steps")
    elif (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")
    elif steps is not None:
        check_int("steps", steps, 1)
    else:
        check_positive("epochs", epochs)  # type: ignore[arg-type]
    return solve


def _infer_solve(
    target_epsilon: float | None,
    noise_multiplier: float | None,
    steps: int | None,
    epochs: float | None,
    sample_rate: float | None,
    batch_size: int | None,
) -> str:
    missing = []
    if target_epsilon is None:
        missing.append("epsilon")
    if noise_multiplier is None:
        missing.append("noise")
    if steps is None and epochs is None:
        missing.append("steps")
    if sample_rate is None and batch_size is None:
        missing.append("batch")
    if len(missing) != 1:
        what = "nothing is missing" if not missing else f"{', '.join(missing)} are all missing"
        raise ValueError(f"leave out exactly one of target_epsilon, noise_multiplier, steps/epochs, "
                         f"sample_rate/batch_size (or pass solve=...): {what}")
    return missing[0]


def _resolve_sample_rate(
    sample_rate: float | None, batch_size: int | None, dataset_size: int | None
) -> tuple[float, int | None]:
    if sample_rate is not None:
        if batch_size is not None:
            raise ValueError("give sample_rate or batch_size with dataset_size, not both")
        return check_sample_rate(sample_rate), None
    if batch_size is None:
        raise ValueError("give sample_rate, or batch_size with dataset_size")
    if dataset_size is None:
        raise ValueError("dataset_size is required with batch_size")
    batch_size = check_int("batch_size", batch_size, 1)
    if batch_size > dataset_size:
        raise ValueError(f"batch_size must be in [1, dataset_size={dataset_size}], got {batch_size}")
    return batch_size / dataset_size, batch_size


def _noise_guess(target: float, sample_rate: float, steps: int, delta: float) -> float:
    """Starting point ``1.5 q sqrt(T log(1/delta)) / epsilon`` (the moments-accountant scaling of Abadi et al. 2016,
    ``epsilon ~ q sqrt(T log(1/delta)) / sigma``), kept inside the search range."""
    guess = 1.5 * sample_rate * math.sqrt(steps * math.log(1.0 / delta)) / target
    return min(max(guess, 4 * MIN_NOISE), MAX_NOISE / 4)


def _solve_noise(
    eps_of: Callable[[float], float], target: float, tol: float, guess: float = 1.0, hint: str = "take fewer steps"
) -> tuple[float, float]:
    """Smallest-epsilon-gap sigma with ``target - tol <= eps_of(sigma) <= target`` (eps decreasing in sigma)."""
    # bracket in log sigma: lo infeasible (eps > target), hi feasible (eps <= target)
    x = math.log(guess)
    e = eps_of(guess)
    if e <= target:
        x_hi, e_hi = x, e
        while True:
            x -= math.log(2.0)
            if math.exp(x) < MIN_NOISE:
                return math.exp(x_hi), e_hi  # even tiny noise meets the target
            e = eps_of(math.exp(x))
            if e > target:
                x_lo, e_lo = x, e
                break
            x_hi, e_hi = x, e
    else:
        x_lo, e_lo = x, e
        while True:
            x += math.log(2.0)
            if math.exp(x) > MAX_NOISE:
                raise ValueError(
                    f"target_epsilon={target} is not reachable with noise_multiplier <= {MAX_NOISE:g}: it still "
                    f"spends epsilon={e_lo:.6g}; reachable: target_epsilon >= {e_lo:.6g}, or {hint}"
                )
            e = eps_of(math.exp(x))
            if e <= target:
                x_hi, e_hi = x, e
                break
            x_lo, e_lo = x, e
    # Illinois regula falsi on g(x) = eps(e^x) - target, g(x_lo) > 0 >= g(x_hi)
    g_lo, g_hi = e_lo - target, e_hi - target
    side = 0
    for _ in range(100):
        if -g_hi <= tol:
            break
        x = x_hi - g_hi * (x_hi - x_lo) / (g_hi - g_lo)
        width = x_hi - x_lo
        if not (min(x_lo, x_hi) < x < max(x_lo, x_hi)) or abs(width) < 1e-15:
            x = 0.5 * (x_lo + x_hi)
        e = eps_of(math.exp(x))
        g = e - target
        if g <= 0:
            x_hi, g_hi, e_hi = x, g, e
            if side == -1:
                g_lo *= 0.5
            side = -1
        else:
            x_lo, g_lo = x, g
            if side == 1:
                g_hi *= 0.5
            side = 1
        if abs(x_hi - x_lo) < 1e-14:
            break
    return math.exp(x_hi), e_hi


def _max_integer(eps_of: Callable[[int], float], target: float, lo: int, e_lo: float, limit: int) -> int:
    """Largest n in [lo, limit] with ``eps_of(n) <= target``, given ``eps_of(lo) = e_lo <= target`` and
    eps increasing in n: doubling bracket, then interpolation guarded by bisection."""
    hi, e_hi = None, None
    n = lo
    while hi is None:
        n = min(limit, max(n + 1, 2 * n))
        e = eps_of(n)
        if e <= target:
            lo, e_lo = n, e
            if n >= limit:
                return limit
        else:
            hi, e_hi = n, e
    use_interp = True
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if use_interp and e_hi > e_lo:
            guess = lo + int((target - e_lo) * (hi - lo) / (e_hi - e_lo))
            mid = min(hi - 1, max(lo + 1, guess))
        e = eps_of(mid)
        shrink_before = hi - lo
        if e <= target:
            lo, e_lo = mid, e
        else:
            hi, e_hi = mid, e
        use_interp = (hi - lo) < shrink_before // 2 or not use_interp  # alternate when interpolation stalls
    return lo


def scale_batch_and_noise(
    *,
    batch_size: int,
    noise_multiplier: float,
    dataset_size: int,
    steps: int,
    delta: float,
    factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
    accountant: str = "rdp",
) -> list[dict[str, float]]:
    """The batch-noise scaling rule: ``B' = k B``, ``sigma' = k sigma`` at fixed steps keeps the noise std of the
    mean gradient ``sigma' C / B' = sigma C / B`` (Sander et al. 2023, "TAN without a burn"); each candidate
    with its epsilon. Candidates with ``B' > dataset_size`` or ``B' < 1`` are left out."""
    check_int("batch_size", batch_size, 1)
    check_positive("noise_multiplier", noise_multiplier)
    check_int("dataset_size", dataset_size, 1)
    check_int("steps", steps, 1)
    check_delta(delta)
    out = []
    for i, k in enumerate(factors):
        check_non_negative(f"factors[{i}]", k)
        b = round(batch_size * k)
        if b < 1 or b > dataset_size:
            continue
        sigma = noise_multiplier * b / batch_size
        q = b / dataset_size
        out.append({
            "factor": float(k),
            "batch_size": b,
            "noise_multiplier": sigma,
            "sample_rate": q,
            "noise_std_over_clip": sigma / b,
            "epsilon": epsilon([(sigma, q, steps)], delta, accountant),
        })
    return out
