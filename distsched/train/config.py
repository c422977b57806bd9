"""The training config: typed dataclasses read from YAML, validated once at the edge.

A config file is one mapping::

    name: digits_qsr
    seed: 0
    workers: 2              # or [min, max]: elastic, on Ray Train (distsched.cluster.elastic)
    steps: 400              # or epochs: 5
    batch_size: 32
    model: {name: mlp, hidden: [64]}
    data: {name: digits, partition: iid}
    optimizer: {name: sgd, momentum: 0.0}
    schedule: {name: cosine, lr: 0.2, total_steps: 400, warmup_steps: 20}
    sync: {name: qsr, h_base: 2, alpha: 0.2}
    checkpoint: {every: 100, keep: 2}

``schedule`` is any :func:`distsched.schedules.from_spec` mapping (composition allowed) and ``sync``
is a rule from :data:`distsched.sync.RULES` with its parameters, plus the engine options
(``average_buffers``, ``average_momentum``, ``lr_compensation: {h_ref, power}``,
``outer: {lr, momentum, nesterov}`` where ``lr`` and ``momentum`` may be schedule specs of the outer
round, ``fragments``, ``compression: none|bf16|fp16|int8`` or ``{lr_peak, levels}`` (the codec from
the LR, :class:`distsched.sync.LRCompression`), ``error_feedback``, ``delay``, ``mix``).
Both are checked at load time by building them.
``privacy`` turns on DP-SGD (:class:`distsched.privacy.PrivacyConfig`, checked at load time).
``controller`` puts a feedback controller on the schedule (``{name: plateau, factor: 0.5, patience: 3}``;
:mod:`distsched.train.controller`, checked at load time by building it).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

from distsched._checks import check_choice, check_int, check_non_negative, check_positive, check_range
from distsched.config import build, check_name, from_mapping, load_yaml, to_mapping

BUILTIN_MODELS = ("mlp", "cnn", "gpt")  # distsched.data.models.BUILTIN_MODELS (kept here: no torch import at load)
BUILTIN_DATA = ("digits", "synthetic", "stdlib_text")
PARTITIONS = ("iid", "label_skew")
OPTIMIZERS = ("sgd", "adam", "adamw")
#: ``sync`` keys that configure the engine, not the rule.
ENGINE_KEYS = ("average_buffers", "average_momentum", "lr_compensation", "outer", "fragments", "compression",
               "error_feedback", "delay", "mix")


@dataclasses.dataclass
class ModelConfig:
    """The network. ``name``: ``mlp``, ``cnn``, ``gpt`` (kwargs ``layers``, ``heads``, ``dim``, ``context``:
    :func:`distsched.data.gpt.gpt`) or ``package.module:factory`` (called as
    ``factory(input_shape=..., num_classes=..., **kwargs)``)."""

    name: str = "mlp"
    #: hidden layer widths of the MLP; channels of the CNN's two conv layers.
    hidden: list[int] = dataclasses.field(default_factory=lambda: [64])
    #: keyword arguments of ``gpt`` or of an import-path factory.
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("name", self.name, BUILTIN_MODELS)
        self.hidden = [check_int(f"hidden[{i}]", h, 1) for i, h in enumerate(self.hidden)]

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> Any:
        """The ``torch.nn.Module`` (:func:`distsched.data.build_model`); call under a fixed torch seed."""
        from distsched.data import build_model

        return build_model(self.name, input_shape, num_classes, self.hidden, self.kwargs)


@dataclasses.dataclass
class DataConfig:
    """The data set and how it is split over the workers.

    ``name``: ``digits`` (scikit-learn's 8x8 digits, 1797 images, 10 classes), ``synthetic``
    (Gaussian blobs), ``stdlib_text`` (next-byte prediction on the interpreter's standard library;
    kwargs ``context``, ``val_fraction``, ``val_windows``, ``cache_dir``: :func:`distsched.data.stdlib_text`)
    or ``package.module:factory`` returning a Dataset or ``(train, test)``.
    ``partition``: ``iid`` (equal random shards) or ``label_skew`` (per class, the shares of the
    workers are drawn from ``Dirichlet(alpha)``; Hsu et al. 2019, "Measuring the effects of
    non-identical data distribution"). Smaller ``alpha`` = more skew.
    """

    name: str = "digits"
    partition: str = "iid"
    alpha: float = 0.5
    #: fraction held out as the test split (built-in data sets).
    test_fraction: float = 0.2
    #: synthetic: samples, features, classes and the noise around each class centre.
    samples: int = 2048
    features: int = 16
    classes: int = 4
    noise: float = 1.0
    #: keyword arguments of ``stdlib_text`` or of an import-path factory.
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("name", self.name, BUILTIN_DATA)
        check_choice("partition", self.partition, PARTITIONS)
        check_positive("alpha", self.alpha)
        check_range("test_fraction", self.test_fraction, 0.0, 1.0, high_open=True)
        check_int("samples", self.samples, 8)
        check_int("features", self.features, 1)
        check_int("classes", self.classes, 2)
        check_non_negative("noise", self.noise)

    def load(self, seed: int) -> Any:
        """The :class:`distsched.data.DataBundle` (same on every worker for the same seed)."""
        from distsched.data import load_bundle

        blobs = {"samples": self.samples, "features": self.features, "classes": self.classes, "noise": self.noise}
        return load_bundle(self.name, seed, test_fraction=self.test_fraction, blobs_params=blobs, kwargs=self.kwargs)

    def shards(self, targets: Any, workers: int, batch_size: int, seed: int) -> list[Any]:
        """Every worker's index shard (:func:`distsched.data.make_shards`), identical on all workers."""
        from distsched.data import make_shards

        return make_shards(targets, self.partition, workers, batch_size, seed, alpha=self.alpha)


@dataclasses.dataclass
class OptimizerConfig:
    """The inner optimizer; its learning rate comes from ``schedule``."""

    name: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self) -> None:
        check_choice("name", self.name, OPTIMIZERS)
        check_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        check_non_negative("weight_decay", self.weight_decay)
        if len(self.betas) != 2:
            raise ValueError(f"betas must have 2 entries, got {self.betas!r}")
        for i, b in enumerate(self.betas):
            check_range(f"betas[{i}]", b, 0.0, 1.0, high_open=True)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0, got momentum=0.0")


@dataclasses.dataclass
class CheckpointConfig:
    """Every ``every`` steps each worker saves its own state; the last ``keep`` checkpoints stay."""

    every: int = 100
    keep: int = 2

    def __post_init__(self) -> None:
        check_int("every", self.every, 1)
        check_int("keep", self.keep, 1)


@dataclasses.dataclass
class TrainConfig:
    """One training run. Exactly one of ``steps`` and ``epochs`` is given; ``epochs`` counts passes
    over the smallest worker shard."""

    schedule: dict[str, Any]
    name: str = "run"
    seed: int = 0
    #: the number of workers, or ``[min, max]``: an elastic run (Ray launcher) that shrinks when a worker is
    #: lost and grows when capacity comes back (:mod:`distsched.cluster.elastic`). Read back, ``workers`` is then
    #: ``max`` (the size a run starts at when the cluster has room) and :attr:`elastic` is ``(min, max)``.
    workers: int | list[int] = 2
    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32
    #: a metrics record (loss averaged over the workers) every ``log_every`` steps.
    log_every: int = 10
    #: a validation record (``val_loss``, ``val_accuracy``; ``val_bpb`` for the LM task) of the workers'
    #: averaged model on the test split every ``eval_every`` steps and after the last step
    #: (:mod:`distsched.train.validation`); a multiple of ``log_every``; 0 = off.
    eval_every: int = 0
    #: torch intra-op threads per worker.
    threads: int = 1
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    sync: dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "fixed", "h": 1})
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    #: DP-SGD: a :class:`distsched.privacy.PrivacyConfig` mapping (target_epsilon / noise_multiplier, delta, ...).
    privacy: dict[str, Any] | None = None
    #: a feedback controller on the schedule, ``{name: pid | plateau | warm_restart | curriculum, ...}``,
    #: fed the workers' mean loss at every metrics record (:mod:`distsched.train.controller`); None = off.
    controller: dict[str, Any] | None = None
    #: the LR at another world size W (a resume at a new ``workers``): ``none`` | ``linear`` (x W/W0) |
    #: ``sqrt`` (x sqrt(W/W0)), W0 the run's first size (:func:`distsched.train.resize.world_lr_factor`).
    world_lr: str = "none"
    #: ``(min, max)`` of an elastic run (``workers: [min, max]``), else None; set from ``workers``.
    elastic: tuple[int, int] | None = dataclasses.field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workers, self.elastic = parse_workers(self.workers)
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"name must be a non-empty string of letters, digits, '-', '_', '.', got {self.name!r}")
        check_int("seed", self.seed, 0)
        check_int("workers", self.workers, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("log_every", self.log_every, 1)
        check_int("eval_every", self.eval_every, 0)
        if self.eval_every % self.log_every:
            raise ValueError(f"eval_every must be a multiple of log_every {self.log_every} (0 = off), "
                             f"got {self.eval_every}")
        check_int("threads", self.threads, 1)
        from distsched.train.resize import world_lr_factor

        world_lr_factor(self.world_lr, 1, 1)
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"give exactly one of steps and epochs, got steps={self.steps!r}, epochs={self.epochs!r}")
        if self.steps is not None:
            check_int("steps", self.steps, 1)
        if self.epochs is not None:
            check_positive("epochs", self.epochs)
        build_schedule(self.schedule)
        if isinstance(self.sync, Mapping) and "rule" in self.sync and "name" not in self.sync:
            warnings.warn("sync.rule is deprecated: write sync.name (same values)", FutureWarning, stacklevel=2)
            self.sync = sync_spec(self.sync)
        build_sync(self.sync)
        if self.privacy is not None:
            from distsched.privacy.config import privacy_config, refuse_unprivatized_signals

            privacy_config(self.privacy)
            refuse_unprivatized_signals(controller=self.controller is not None, sync_rule=build_rule(self.sync))
        if self.controller is not None:
            from distsched.train.controller import build_controller

            build_controller(self.controller)
        if self.elastic is not None:
            check_elastic(self)


def parse_workers(value: Any) -> tuple[int, tuple[int, int] | None]:
    """``workers`` of a config or ``--workers``: ``N`` -> ``(N, None)``; ``[min, max]``, ``"min:max"`` ->
    ``(max, (min, max))`` with ``1 <= min <= max`` (``[n, n]`` is a fixed size ``n``)."""
    text = value
    if isinstance(value, str):
        lo, sep, hi = value.partition(":")
        if sep and lo.strip().isdigit() and hi.strip().isdigit():
            value = [int(lo), int(hi)]
        elif value.strip().isdigit():
            value = int(value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        lo, hi = value
        if 1 <= lo <= hi:
            return (hi, None) if lo == hi else (hi, (lo, hi))
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, None
    raise ValueError(f"workers must be an integer >= 1 or [min, max] (MIN:MAX) with 1 <= min <= max, got {text!r}")


def check_elastic(cfg: TrainConfig) -> None:
    """Refuse what an elastic run cannot resize: ``epochs`` (an epoch's length in steps changes with the
    number of workers), exchanges in flight (``sync.delay > 0``), DP in ``local`` mode (one accountant per
    shard)."""
    lo, hi = cfg.elastic or (cfg.workers, cfg.workers)
    if cfg.steps is None:
        raise ValueError(f"workers [{lo}, {hi}] (elastic) needs steps, not epochs: an epoch's length in steps "
                         f"changes with the number of workers")
    if int(cfg.sync.get("delay", 0) or 0) > 0:
        raise ValueError(f"workers [{lo}, {hi}] (elastic): sync.delay > 0 keeps exchanges in flight that a "
                         f"resize cannot carry; use delay 0")
    if cfg.privacy is not None:
        from distsched.privacy.config import privacy_config
        from distsched.privacy.training import resolve_mode

        every_step = cfg.sync.get("name") == "fixed" and cfg.sync.get("h") == 1
        if any(resolve_mode(privacy_config(cfg.privacy).mode, w, every_step) == "local" for w in range(lo, hi + 1)):
            raise ValueError(f"workers [{lo}, {hi}] (elastic): privacy in local mode (one accountant per shard) "
                             f"cannot resize; use privacy.mode group (with sync fixed, h 1)")


def build_schedule(spec: Mapping[str, Any]) -> Any:
    """The schedule of a ``schedule`` block (errors name ``schedule.<key>``)."""
    from distsched.schedules import from_spec

    return from_spec(spec, _where="schedule")


def sync_spec(spec: Any) -> Any:
    """The ``sync`` block with ``name`` for its rule (the deprecated alias ``rule`` renamed, first)."""
    if isinstance(spec, Mapping) and "rule" in spec and "name" not in spec:
        return {"name": spec["rule"], **{k: v for k, v in spec.items() if k != "rule"}}
    return spec


def build_rule(spec: Mapping[str, Any]) -> Any:
    """The sync rule of a ``sync`` block: ``RULES[spec["name"]](**parameters)`` by
    :func:`distsched.config.build` (the engine keys are left to :func:`engine_options`)."""
    from distsched.sync import RULES

    return build(RULES, sync_spec(spec), "sync", exclude=ENGINE_KEYS)


def _lr_compression(spec: Mapping[str, Any]) -> Any:
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


def engine_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """LocalSGD keyword arguments from a ``sync`` block (average_buffers, average_momentum,
    lr_compensation, outer_optimizer, fragments, compression, error_feedback, delay, mix)."""
    from distsched.sync import LRCompensation, OuterSGD

    out: dict[str, Any] = {}
    for key in ("average_buffers", "average_momentum", "error_feedback"):
        if key in spec:
            if not isinstance(spec[key], bool):
                raise ValueError(f"sync.{key}: expected true or false, got {spec[key]!r}")
            out[key] = spec[key]
    from distsched.sync import CODECS

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
        raise ValueError(f"sync.{exc}") from None
    comp = spec.get("lr_compensation")
    if comp is not None:
        out["lr_compensation"] = from_mapping(LRCompensation, comp, prefix="sync.lr_compensation")
    outer = spec.get("outer")
    if outer is not None:
        out["outer_optimizer"] = from_mapping(OuterSGD, outer, prefix="sync.outer")
    return out


def build_sync(spec: Mapping[str, Any], warmup_steps: int = 0) -> tuple[Any, dict[str, Any]]:
    """(rule, engine options) of a ``sync`` block, validated.

    ``warmup_steps``: the schedule's warmup length. QSR holds ``H = h_base`` during warmup (its LR
    says nothing about the noise scale there, and an LR starting at 0 would give an endless first
    round); a ``sync.warmup_steps`` given in the config wins.
    """
    spec = sync_spec(spec)
    if isinstance(spec, Mapping) and spec.get("name") == "qsr" and "warmup_steps" not in spec and warmup_steps:
        spec = {**spec, "warmup_steps": warmup_steps}
    rule = build_rule(spec)
    return rule, engine_options(spec)


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read and validate a YAML training config; ``overrides`` replace top-level keys."""
    data = load_yaml(path)
    if overrides:
        data = {**data, **overrides}
    return from_mapping(TrainConfig, data)


def config_from_mapping(data: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a plain mapping (e.g. a run folder's ``config.yaml``)."""
    return from_mapping(TrainConfig, data)


def config_to_mapping(cfg: TrainConfig) -> dict[str, Any]:
    """Plain mapping of ``cfg`` (for ``config.yaml``); an elastic run's ``workers`` is ``[min, max]``."""
    out = to_mapping(cfg)
    elastic = out.pop("elastic", None)
    if elastic is not None:
        out["workers"] = list(elastic)
    return out
