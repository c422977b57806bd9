"""Noise schedules: the DP-SGD noise multiplier as a pure function of the step, ``sigma_t = sigma * shape(t)``.

The planner scales ``sigma`` so that the whole run meets the budget; during training
:class:`NoiseScheduler` writes ``sigma_t`` into the optimizer's ``noise_multiplier`` before each step,
so the accountant's step hook sees every change. Decaying noise follows Yu et al. 2019
("Differentially private model publishing for deep learning", dynamic privacy budget allocation).

Continuous shapes (exponential, linear) hold their value for ``interval`` steps, so that the
accountant history has ``total_steps / interval`` segments (PRV's cost grows with that count).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any

from distsched._checks import check_increasing, check_int, check_non_negative, check_positive, check_range
from distsched.privacy.accounting import Segment, check_sample_rate
from distsched.schedules.base import Schedule


@dataclasses.dataclass(frozen=True)
class NoiseSchedule(Schedule):
    """Base: ``sigma_t = sigma * shape(t)`` with ``shape(0) = 1`` (piecewise: ``factors[0]``)."""

    def shape(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return self.sigma * self.shape(step)  # type: ignore[attr-defined]

    def with_sigma(self, sigma: float) -> NoiseSchedule:
        """The same shape at level ``sigma``."""
        return dataclasses.replace(self, sigma=sigma)

    def segments(self, total_steps: int, sample_rate: float) -> list[Segment]:
        """Run-length encoded ``(sigma_t, q, n)`` history of steps ``0 .. total_steps - 1``."""
        total_steps = check_int("total_steps", total_steps, 0)
        q = check_sample_rate(sample_rate)
        out: list[Segment] = []
        points = self._change_points(total_steps)
        for i, start in enumerate(points):
            end = points[i + 1] if i + 1 < len(points) else total_steps
            sigma = float(self(start))
            if out and out[-1].noise_multiplier == sigma:
                out[-1] = Segment(sigma, q, out[-1].steps + end - start)
            else:
                out.append(Segment(sigma, q, end - start))
        return out

    def _change_points(self, total_steps: int) -> list[int]:
        """Steps where the value may change (0 first); default: every step."""
        return list(range(total_steps))


@dataclasses.dataclass(frozen=True)
class ConstantNoise(NoiseSchedule):
    """``sigma_t = sigma``."""

    sigma: float = 1.0

    def __post_init__(self) -> None:
        check_non_negative("sigma", self.sigma)

    def shape(self, step: int) -> float:
        return 1.0

    def _change_points(self, total_steps: int) -> list[int]:
        return [0] if total_steps > 0 else []


@dataclasses.dataclass(frozen=True)
class StepNoise(NoiseSchedule):
    """``sigma_t = sigma * gamma^floor(t / step_size)`` (the noise analogue of torch's ``StepLR``)."""

    sigma: float = 1.0
    gamma: float = 0.5
    step_size: int = 1

    def __post_init__(self) -> None:
        check_non_negative("sigma", self.sigma)
        check_positive("gamma", self.gamma)
        check_int("step_size", self.step_size, 1)

    def shape(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)

    def _change_points(self, total_steps: int) -> list[int]:
        return list(range(0, total_steps, self.step_size))


@dataclasses.dataclass(frozen=True)
class ExponentialNoise(NoiseSchedule):
    """``sigma_t = sigma * ratio^(s / T)`` with ``s = interval * floor(t / interval)``, ``T = total_steps``:
    from ``sigma`` at step 0 towards ``ratio * sigma`` at ``T``."""

    sigma: float = 1.0
    ratio: float = 0.5
    total_steps: int = 1
    interval: int = 1

    def __post_init__(self) -> None:
        check_non_negative("sigma", self.sigma)
        check_positive("ratio", self.ratio)
        check_int("total_steps", self.total_steps, 1)
        check_int("interval", self.interval, 1)

    def shape(self, step: int) -> float:
        s = min(self.interval * (step // self.interval), self.total_steps)
        return self.ratio ** (s / self.total_steps)

    def _change_points(self, total_steps: int) -> list[int]:
        return list(range(0, total_steps, self.interval))


@dataclasses.dataclass(frozen=True)
class LinearNoise(NoiseSchedule):
    """``sigma_t = sigma * (1 - (1 - ratio) * s / T)`` with ``s = interval * floor(t / interval)``, capped at
    ``T = total_steps``: linear from ``sigma`` to ``ratio * sigma``."""

    sigma: float = 1.0
    ratio: float = 0.5
    total_steps: int = 1
    interval: int = 1

    def __post_init__(self) -> None:
        check_non_negative("sigma", self.sigma)
        check_range("ratio", self.ratio, 0.0, math.inf, low_open=True, high_open=True)
        check_int("total_steps", self.total_steps, 1)
        check_int("interval", self.interval, 1)

    def shape(self, step: int) -> float:
        s = min(self.interval * (step // self.interval), self.total_steps)
        return 1.0 - (1.0 - self.ratio) * s / self.total_steps

    def _change_points(self, total_steps: int) -> list[int]:
        return list(range(0, total_steps, self.interval))


@dataclasses.dataclass(frozen=True)
class PiecewiseNoise(NoiseSchedule):
    """``sigma_t = sigma * factors[i]`` for ``boundaries[i-1] <= t < boundaries[i]``."""

    sigma: float = 1.0
    factors: tuple[float, ...] = (1.0,)
    boundaries: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_non_negative("sigma", self.sigma)
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))
        for i, f in enumerate(self.factors):
            check_positive(f"factors[{i}]", f)
        object.__setattr__(self, "boundaries", check_increasing("boundaries", self.boundaries, 1))
        if len(self.factors) != len(self.boundaries) + 1:
            raise ValueError(
                f"boundaries must have len(factors) - 1 = {len(self.factors) - 1} entries, got {len(self.boundaries)}"
            )

    def shape(self, step: int) -> float:
        return self.factors[bisect.bisect_right(self.boundaries, step)]

    def _change_points(self, total_steps: int) -> list[int]:
        return [b for b in (0, *self.boundaries) if b < total_steps]


NOISE_SCHEDULES: dict[str, type[NoiseSchedule]] = {
    "constant": ConstantNoise,
    "step": StepNoise,
    "exponential": ExponentialNoise,
    "linear": LinearNoise,
    "piecewise": PiecewiseNoise,
}


def _parse_value(key: str, text: str) -> Any:
    if "/" in text:
        return tuple(_parse_value(key, t) for t in text.split("/"))
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"noise_schedule parameter {key} must be a number, got {text!r}") from None


def noise_schedule_from_spec(
    spec: str | NoiseSchedule | None, *, total_steps: int, interval: int = 1, sigma: float = 1.0
) -> NoiseSchedule:
    """``"NAME[:key=value,...]"`` -> a noise schedule; lists are written ``a/b/c``.

    Examples: ``constant``, ``step:gamma=0.7,step_size=500``, ``exponential:ratio=0.5``,
    ``linear:ratio=0.3,interval=100``, ``piecewise:factors=1.2/1/0.8,boundaries=300/600``.
    ``total_steps`` and ``interval`` fill those parameters when the spec leaves them out.
    """
    if isinstance(spec, NoiseSchedule):
        return spec
    text = (spec or "constant").strip()
    name, _, rest = text.partition(":")
    name = name.strip()
    if name not in NOISE_SCHEDULES:
        raise ValueError(f"noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}, got {name!r}")
    cls = NOISE_SCHEDULES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    params: dict[str, Any] = {"sigma": sigma}
    if "total_steps" in fields:
        params["total_steps"] = total_steps
    if "interval" in fields:
        params["interval"] = interval
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            raise ValueError(
                f"noise_schedule {name!r} takes key=value with key in {', '.join(sorted(fields))}, got {item!r}"
            )
        params[key] = _parse_value(key, value.strip())
    if "factors" in params and not isinstance(params["factors"], tuple):
        params["factors"] = (params["factors"],)
    if "boundaries" in params and not isinstance(params["boundaries"], tuple):
        params["boundaries"] = (params["boundaries"],)
    return cls(**params)


class NoiseScheduler:
    """Writes ``schedule(t)`` into an Opacus ``DPOptimizer``'s ``noise_multiplier`` (closed form, state = step).

    Call :meth:`apply` before ``optimizer.step()`` of step ``t`` (or :meth:`step` after it, like torch's
    LR schedulers); the accountant's step hook then records the value actually used.
    """

    def __init__(self, optimizer: Any, schedule: NoiseSchedule, start_step: int = 0) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.step_count = check_int("start_step", start_step, 0)
        self.apply()

    def apply(self) -> float:
        sigma = float(self.schedule(self.step_count))
        self.optimizer.noise_multiplier = sigma
        return sigma

    def step(self) -> float:
        self.step_count += 1
        return self.apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step_count = int(state_dict["step"])
        self.apply()
