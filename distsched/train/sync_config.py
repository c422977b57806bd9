"""The ``sync`` block of the training config: a sync rule and the engine options, typed.

One mapping, the rule's ``name`` and parameters beside the engine options::

    sync: {name: qsr, h_base: 2, alpha: 0.1414, h_max: 32}               # QSR (Gu et al. 2024)
    sync: {name: fixed, h: 4, fragments: 2, compression: int8, delay: 1}  # streaming, int8, overlapped
    sync: {name: qsr, h_base: 8, alpha: 0.005657, outer: {lr: 0.7, momentum: 0.9, nesterov: true}}  # DiLoCo

:meth:`SyncConfig.from_spec` reads it once, at load time, with one-line errors naming ``sync.<key>``: the
rule is checked by building it from :data:`distsched.sync.RULES` (:func:`distsched.config.build`), the
options are typed fields. A rule has state (AdaComm's first loss, the round in progress), so the config
holds its spec and every worker builds its own with :meth:`SyncConfig.build_rule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distsched._checks import check_choice, check_int, check_range
from distsched.config import build, from_mapping, to_mapping

if TYPE_CHECKING:
    from distsched.sync import LRCompensation, LRCompression, OuterSGD, SyncRule

#: ``sync`` keys that configure the engine (:class:`distsched.sync.LocalSGD`), not the rule.
ENGINE_KEYS = ("average_buffers", "average_momentum", "lr_compensation", "outer", "fragments", "compression",
               "error_feedback", "delay", "mix")
_WHERE = "sync"


@dataclasses.dataclass(frozen=True)
class SyncConfig:
    """How the workers' models are averaged: the rule that picks the period H from the LR, and the
    options of the engine (:class:`distsched.sync.LocalSGD`, whose defaults these are)."""

    #: the rule, a key of :data:`distsched.sync.RULES`: ``fixed``, ``post_local``, ``qsr``, ``adacomm``.
    name: str = "fixed"
    #: the rule's parameters (``h``; ``h_base``, ``alpha``, ``h_max``...), checked by building the rule.
    params: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"h": 1})
    #: average the buffers (BatchNorm statistics) with the parameters.
    average_buffers: bool = True
    #: average the inner optimizer's momentum with the model.
    average_momentum: bool = False
    #: ``lr_eff = lr * min(1, (h_ref / H) ** power)`` (YAML ``{h_ref, power}``); None: off.
    lr_compensation: LRCompensation | None = None
    #: DiLoCo's outer optimizer on the averaged pseudo-gradient (YAML ``{lr, momentum, nesterov}``, ``lr``
    #: and ``momentum`` may be schedule specs of the outer round); None: plain averaging.
    outer: OuterSGD | None = None
    #: model fragments synced at staggered steps (streaming DiLoCo); 1: the whole model at once.
    fragments: int = 1
    #: the exchange's codec, ``none | bf16 | fp16 | int8``, or :class:`distsched.sync.LRCompression`
    #: (YAML ``{lr_peak, levels}``: the codec from the LR).
    compression: str | LRCompression = "none"
    #: return what compression lost at the next exchange.
    error_feedback: bool = True
    #: steps an exchange stays in flight, overlapped with training; 0: blocking.
    delay: int = 0
    #: the share of the worker's own model kept at an overlapped sync, in [0, 1).
    mix: float = 0.0

    @classmethod
    def from_spec(cls, spec: Any, where: str = _WHERE) -> SyncConfig:
        """The block of a mapping ``{name: <rule>, <rule parameters>, <engine options>}`` (the deprecated
        ``rule`` key stands for ``name``); a :class:`SyncConfig` is returned as is. Errors are one line
        naming ``<where>.<key>``."""
        if isinstance(spec, SyncConfig):
            return spec
        spec = sync_spec(spec)
        build(_rules(), spec, where, exclude=ENGINE_KEYS)  # the rule's own checks, once
        params = {k: v for k, v in spec.items() if k != "name" and k not in ENGINE_KEYS}
        return cls(name=spec["name"], params=params, **_engine_fields(spec, where))

    def to_spec(self) -> dict[str, Any]:
        """The mapping :meth:`from_spec` reads back: name, the rule's parameters, the options that differ
        from the defaults."""
        out: dict[str, Any] = {"name": self.name, **self.params}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ENGINE_KEYS and value != f.default:
                out[f.name] = _option_spec(value)
        return out

    @property
    def every_step(self) -> bool:
        """True when the workers average after every step (``fixed`` with ``h: 1``): DP-SGD's ``auto``
        mode is then ``group`` (one noise draw for the whole group)."""
        return self.name == "fixed" and self.params.get("h") == 1

    def build_rule(self, warmup_steps: int = 0) -> SyncRule:
        """A fresh rule (rules have state: one per worker and run).

        ``warmup_steps``: the schedule's warmup length. QSR holds ``H = h_base`` during warmup (its LR
        says nothing about the noise scale there, and an LR starting at 0 would give an endless first
        round); a ``sync.warmup_steps`` given in the config wins.
        """
        params = dict(self.params)
        if self.name == "qsr" and "warmup_steps" not in params and warmup_steps:
            params["warmup_steps"] = warmup_steps
        return build(_rules(), {"name": self.name, **params}, _WHERE, exclude=ENGINE_KEYS)

    def engine_options(self) -> dict[str, Any]:
        """:class:`distsched.sync.LocalSGD` keyword arguments (``outer`` is its ``outer_optimizer``)."""
        return {"average_buffers": self.average_buffers, "average_momentum": self.average_momentum,
                "lr_compensation": self.lr_compensation, "outer_optimizer": self.outer, "fragments": self.fragments,
                "compression": self.compression, "error_feedback": self.error_feedback, "delay": self.delay,
                "mix": self.mix}


def sync_spec(spec: Any) -> Any:
    """The ``sync`` mapping with ``name`` for its rule (the deprecated alias ``rule`` renamed, first)."""
    if isinstance(spec, Mapping) and "rule" in spec and "name" not in spec:
        return {"name": spec["rule"], **{k: v for k, v in spec.items() if k != "rule"}}
    return spec


def _rules() -> Mapping[str, type]:
    from distsched.sync import RULES

    return RULES


def _engine_fields(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The typed engine options given in ``spec`` (the others keep their defaults)."""
    from distsched.sync import CODECS, LRCompensation, OuterSGD

    out: dict[str, Any] = {}
    for key in ("average_buffers", "average_momentum", "error_feedback"):
        if key in spec:
            if not isinstance(spec[key], bool):
                raise ValueError(f"{where}.{key}: expected true or false, got {spec[key]!r}")
            out[key] = spec[key]
    try:
        for key in ("fragments", "delay"):
            if key in spec:
                out[key] = check_int(key, spec[key], 1 if key == "fragments" else 0)
        if isinstance(spec.get("compression"), Mapping):  # strength from the LR
            out["compression"] = _lr_compression(spec["compression"])
        elif "compression" in spec:
            out["compression"] = check_choice("compression", spec["compression"], CODECS)
        if "mix" in spec:
            out["mix"] = check_range("mix", spec["mix"], 0.0, 1.0, high_open=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.{exc}") from None
    if spec.get("lr_compensation") is not None:
        out["lr_compensation"] = from_mapping(LRCompensation, spec["lr_compensation"],
                                              prefix=f"{where}.lr_compensation")
    if spec.get("outer") is not None:
        out["outer"] = from_mapping(OuterSGD, spec["outer"], prefix=f"{where}.outer")
    return out


def _lr_compression(spec: Mapping[str, Any]) -> LRCompression:
    """``{lr_peak: 0.1, levels: [[0.5, bf16], [0.0, int8]]}`` -> :class:`distsched.sync.LRCompression`."""
    from distsched.sync import LRCompression

    unknown = [k for k in spec if k not in ("lr_peak", "levels")]
    if unknown:
        raise ValueError(f"unknown key compression.{unknown[0]} (allowed: levels, lr_peak)")
    if "lr_peak" not in spec:
        raise ValueError("missing required key compression.lr_peak")
    levels = spec.get("levels", LRCompression.__dataclass_fields__["levels"].default)
    if not isinstance(levels, (list, tuple)) or not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in levels):
        raise ValueError(f"compression.levels: expected a list of [threshold, codec] pairs, got {levels!r}")
    try:
        return LRCompression(lr_peak=spec["lr_peak"], levels=tuple((th, name) for th, name in levels))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"compression.{exc}") from None


def _option_spec(value: Any) -> Any:
    """An engine option as YAML: its dataclass as a mapping, a schedule as its spec."""
    from distsched.schedules import Schedule, to_spec

    if isinstance(value, Schedule):
        return to_spec(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _option_spec(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return to_mapping(value)
