"""Schedules from plain mappings (YAML configs) and back.

``from_spec({"name": "cosine", "lr": 0.1, "total_steps": 1000, "warmup_steps": 50})`` builds
``Warmup(Cosine(lr=0.1, total_steps=1000), warmup_steps=50)``, 1000 steps in all (``total_steps`` counts
the warmup); ``to_spec`` writes the mapping back
(``from_spec(to_spec(s)) == s``). Nested schedules (``join``, ``scale``, ...) are nested mappings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from distsched.config import build
from distsched.schedules.base import Schedule
from distsched.schedules.catalogue import CATALOGUE, NAMES
from distsched.schedules.compose import Warmup

#: spec key -> ``Warmup`` field, for keys that wrap any schedule in a warmup.
WARMUP_KEYS: dict[str, str] = {
    "warmup_steps": "warmup_steps",
    "warmup_mode": "mode",
    "warmup_start_factor": "start_factor",
}
_WARMUP_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Warmup) if f.default is not dataclasses.MISSING}


def _known() -> str:
    return ", ".join(sorted(CATALOGUE))


def _convert(value: Any, annotation: str, key: str) -> Any:
    """Turn a plain YAML value into what the field expects (nested specs, tuples, numbers in strings)."""
    ann = annotation.replace(" ", "")
    if ann == "Schedule":
        return from_spec(value, _where=key)
    if ann.startswith("tuple[Schedule"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list of schedule specs, got {value!r}")
        return tuple(from_spec(v, _where=f"{key}[{i}]") for i, v in enumerate(value))
    if ann.startswith("tuple["):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        item = ann[len("tuple[") :].split(",")[0]
        return tuple(_number(v, item) for v in value)
    return _number(value, ann)


def _number(value: Any, ann: str) -> Any:
    # YAML 1.1 reads ``1e-4`` as a string: accept numeric strings for numeric fields.
    if isinstance(value, str) and ann.split("|")[0] in ("float", "int"):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if ann.startswith("int") and number.is_integer() else number
    return value


def from_spec(spec: Mapping[str, Any] | Schedule, *, _where: str = "schedule") -> Schedule:
    """Build a schedule from ``{name: ..., <parameters>}``: ``CATALOGUE[name](**parameters)`` by
    :func:`distsched.config.build`.

    A ``warmup_steps`` key (with optional ``warmup_mode``, ``warmup_start_factor``) on a schedule that
    has no such parameter of its own wraps it in :class:`Warmup`, in front. ``total_steps`` is the whole
    run, warmup included, for every schedule (as HF and timm): ``{cosine, total_steps: 100,
    warmup_steps: 10}`` lasts 100 steps, the cosine taking the last 90, and ends at ``min_lr``.
    Unknown names, unknown keys and missing keys raise the shared one-line ``ValueError`` naming the full
    key path (``schedule.schedules[1].lr``); values are validated by the schedule itself.
    """
    if isinstance(spec, Schedule):
        return spec
    cls = CATALOGUE.get(spec.get("name")) if isinstance(spec, Mapping) and isinstance(spec.get("name"), str) else None
    types = {f.name: str(f.type) for f in dataclasses.fields(cls) if f.init} if cls is not None else {}
    own_warmup = tuple(k for k in WARMUP_KEYS if k not in types)

    def convert(key: str, value: Any) -> Any:
        return _convert(value, types[key], f"{_where}.{key}")

    schedule = build(CATALOGUE, spec, _where, kind="schedule", exclude=own_warmup, convert=convert)
    wrap = {WARMUP_KEYS[k]: spec[k] for k in own_warmup if k in spec}
    if wrap:
        if "warmup_steps" not in wrap:
            raise ValueError(f"{_where}: warmup_mode/warmup_start_factor need warmup_steps")
        wrap["warmup_steps"] = _number(wrap["warmup_steps"], "int")
        wrap["start_factor"] = _number(wrap.get("start_factor", _WARMUP_DEFAULTS["start_factor"]), "float")
        schedule = Warmup(schedule, **wrap)
    return schedule


def _plain(value: Any) -> Any:
    if isinstance(value, Schedule):
        return to_spec(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_spec(schedule: Schedule) -> dict[str, Any]:
    """The mapping that :func:`from_spec` turns back into ``schedule`` (for ``config.yaml``)."""
    cls = type(schedule)
    if cls not in NAMES:
        raise ValueError(f"schedule must be a catalogue schedule (one of: {_known()}), got {type(schedule).__name__}")
    if cls is Warmup:
        inner = schedule.schedule
        inner_fields = {f.name for f in dataclasses.fields(inner)} if isinstance(inner, Schedule) else set()
        if type(inner) in NAMES and type(inner) is not Warmup and not inner_fields & set(WARMUP_KEYS):
            out = to_spec(inner)
            out["warmup_steps"] = schedule.warmup_steps
            if schedule.mode != _WARMUP_DEFAULTS["mode"]:
                out["warmup_mode"] = schedule.mode
            if schedule.start_factor != _WARMUP_DEFAULTS["start_factor"]:
                out["warmup_start_factor"] = schedule.start_factor
            return out
    out: dict[str, Any] = {"name": NAMES[cls]}
    for f in dataclasses.fields(schedule):
        if f.init:
            out[f.name] = _plain(getattr(schedule, f.name))
    return out
