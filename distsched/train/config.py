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

Four blocks are specs with their own grammar, each read ONCE, at load time, into a typed object that
the workers use as is (:func:`distsched.config.spec_field`):

* ``schedule``: any :func:`distsched.schedules.from_spec` mapping (composition allowed) -> the
  :class:`~distsched.schedules.Schedule` itself (a pure function of the step: ``cfg.schedule(0)``);
* ``sync``: a rule from :data:`distsched.sync.RULES` with its parameters, plus the engine options
  (``average_buffers``, ``average_momentum``, ``lr_compensation: {h_ref, power}``,
  ``outer: {lr, momentum, nesterov}`` where ``lr`` and ``momentum`` may be schedule specs of the outer
  round, ``fragments``, ``compression: none|bf16|fp16|int8`` or ``{lr_peak, levels}`` (the codec from
  the LR, :class:`distsched.sync.LRCompression`), ``error_feedback``, ``delay``, ``mix``) ->
  :class:`~distsched.train.sync_config.SyncConfig` (``build_rule()``, ``engine_options()``, ``every_step``);
* ``privacy`` turns on DP-SGD -> :class:`distsched.privacy.PrivacyConfig`;
* ``controller`` puts a feedback controller on the schedule (``{name: plateau, factor: 0.5, patience: 3}``)
  -> :class:`~distsched.train.controller.ControllerConfig` (``build()``).

Rules and controllers have state, so their blocks hold the checked spec and each worker builds its own.
``config.yaml`` in a run folder shows these blocks as they were written.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distsched._checks import check_choice, check_int, check_non_negative, check_positive, check_range
from distsched.config import check_name, from_mapping, load_yaml, spec_field, to_mapping
from distsched.schedules import Schedule, from_spec, to_spec
from distsched.train.controller import ControllerConfig
from distsched.train.sync_config import SyncConfig, sync_spec

if TYPE_CHECKING:
    from distsched.privacy.config import PrivacyConfig

BUILTIN_MODELS = ("mlp", "cnn", "gpt")  # distsched.data.models.BUILTIN_MODELS (kept here: no torch import at load)
BUILTIN_DATA = ("digits", "synthetic", "stdlib_text")
PARTITIONS = ("iid", "label_skew")
OPTIMIZERS = ("sgd", "adam", "adamw")


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

    #: the LR schedule, built from its spec (:func:`distsched.schedules.from_spec`; errors name ``schedule.<key>``).
    schedule: Schedule = spec_field(lambda value, key: _read_schedule(value, key), to_spec)
    name: str = "run"
    seed: int = 0
    #: the number of workers, or ``[min, max]``: an elastic run (Ray launcher) that shrinks when a worker is
    #: lost and grows when capacity comes back (:mod:`distsched.cluster.elastic`). Read back, ``workers`` is then
    #: ``max`` (the size a run starts at when the cluster has room) and :attr:`elastic` is ``(min, max)``.
    workers: int | list[int] | str = 2
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
    #: the sync rule and the engine options (:class:`~distsched.train.sync_config.SyncConfig`); default: average
    #: after every step.
    sync: SyncConfig = spec_field(lambda value, key: _read_sync(value, key), SyncConfig.to_spec,
                                  default_factory=SyncConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    #: DP-SGD (:class:`distsched.privacy.PrivacyConfig`: target_epsilon / noise_multiplier, delta, ...); None = off.
    privacy: PrivacyConfig | None = spec_field(lambda value, key: _read_privacy(value, key), to_mapping, default=None)
    #: a feedback controller on the schedule, ``{name: pid | plateau | warm_restart | curriculum, ...}``,
    #: fed the workers' mean loss at every metrics record (:class:`~distsched.train.controller.ControllerConfig`,
    #: :mod:`distsched.train.controller`); None = off.
    controller: ControllerConfig | None = spec_field(lambda value, key: _read_controller(value, key),
                                                     ControllerConfig.to_spec, default=None)
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
        typed = isinstance(self.schedule, Schedule) and isinstance(self.sync, SyncConfig) and isinstance(
            self.controller, (ControllerConfig, type(None)))
        if self.privacy is not None:
            from distsched.privacy.config import PrivacyConfig, refuse_unprivatized_signals

            typed = typed and isinstance(self.privacy, PrivacyConfig)
        if not typed:
            raise TypeError("schedule, sync, privacy and controller are typed blocks (Schedule, SyncConfig, "
                            "PrivacyConfig, ControllerConfig); config_from_mapping reads them from plain mappings")
        if self.privacy is not None:
            refuse_unprivatized_signals(controller=self.controller is not None, sync_rule=self.sync.build_rule())
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
    if cfg.sync.delay > 0:
        raise ValueError(f"workers [{lo}, {hi}] (elastic): sync.delay > 0 keeps exchanges in flight that a "
                         f"resize cannot carry; use delay 0")
    if cfg.privacy is not None:
        from distsched.privacy.training import resolve_mode

        if any(resolve_mode(cfg.privacy.mode, w, cfg.sync.every_step) == "local" for w in range(lo, hi + 1)):
            raise ValueError(f"workers [{lo}, {hi}] (elastic): privacy in local mode (one accountant per shard) "
                             f"cannot resize; use privacy.mode group (with sync fixed, h 1)")


def _mapping(value: Any, key: str, typed: type) -> Any:
    """``value`` if it is a block's mapping (or already its typed object), else the one-line error."""
    if not isinstance(value, (Mapping, typed)):
        raise ValueError(f"{key}: expected a mapping, got {value!r}")
    return value


def _read_schedule(value: Any, key: str) -> Schedule:
    """The ``schedule`` field: the :class:`~distsched.schedules.Schedule` of its spec (errors: ``schedule.<key>``)."""
    return from_spec(_mapping(value, key, Schedule), _where=key)


def _read_sync(value: Any, key: str) -> SyncConfig:
    """The ``sync`` field: its :class:`~distsched.train.sync_config.SyncConfig` (errors name ``sync.<key>``)."""
    return SyncConfig.from_spec(_mapping(value, key, SyncConfig), key)


def _read_controller(value: Any, key: str) -> ControllerConfig | None:
    """The ``controller`` field: None (no controller) or its :class:`~distsched.train.controller.ControllerConfig`."""
    return None if value is None else ControllerConfig.from_spec(_mapping(value, key, ControllerConfig), key)


def _read_privacy(value: Any, key: str) -> PrivacyConfig | None:
    """The ``privacy`` field: None (no DP) or :func:`distsched.privacy.privacy_config` of the block (errors
    name ``privacy.<key>``); imported only for a config with DP (Opacus is slow to import)."""
    if value is None:
        return None
    from distsched.privacy.config import PrivacyConfig, privacy_config

    return privacy_config(_mapping(value, key, PrivacyConfig))


def _upgrade(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data`` with old spellings replaced, each with a FutureWarning: ``sync.rule`` -> ``sync.name``."""
    sync = data.get("sync")
    if sync_spec(sync) is not sync:
        warnings.warn("sync.rule is deprecated: write sync.name (same values)", FutureWarning, stacklevel=3)
        return {**data, "sync": sync_spec(sync)}
    return data


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read and validate a YAML training config; ``overrides`` replace top-level keys."""
    data = load_yaml(path)
    if overrides:
        data = {**data, **overrides}
    return from_mapping(TrainConfig, _upgrade(data))


def config_from_mapping(data: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a plain mapping (e.g. a run folder's ``config.yaml``)."""
    return from_mapping(TrainConfig, _upgrade(data))


def config_to_mapping(cfg: TrainConfig) -> dict[str, Any]:
    """Plain mapping of ``cfg`` (for ``config.yaml``); an elastic run's ``workers`` is ``[min, max]``."""
    out = to_mapping(cfg)
    elastic = out.pop("elastic", None)
    if elastic is not None:
        out["workers"] = list(elastic)
    return out
