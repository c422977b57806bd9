"""Parameter checks shared by the whole library.

Each check raises ``ValueError`` naming the parameter, the value given and the allowed range,
so that the CLI can print the message as one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _fmt(value: object) -> str:
    return repr(value)


def check_finite(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {_fmt(value)}")
    return float(value)


def check_positive(name: str, value: float) -> float:
    """value > 0."""
    check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {_fmt(value)}")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """value >= 0."""
    check_finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {_fmt(value)}")
    return float(value)


def check_range(
    name: str,
    value: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """low <= value <= high, with either end optionally open."""
    check_finite(name, value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lb}{low}, {high}{rb}, got {_fmt(value)}")
    return float(value)


def check_int(name: str, value: int, minimum: int = 0) -> int:
    """An integer (bools refused) with value >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {_fmt(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {_fmt(value)}")
    return int(value)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, got {_fmt(value)}")
    return value


def check_increasing(name: str, values: Sequence[int], minimum: int = 0) -> tuple[int, ...]:
    """A strictly increasing sequence of integers, each >= minimum."""
    out = tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise ValueError(f"{name} must be strictly increasing, got {list(values)}")
    return out
