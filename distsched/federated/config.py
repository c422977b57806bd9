"""Typed configuration of a federated simulation (one YAML file, validated once at the edge).

Learning rates (``client.lr``, ``strategy.server_lr``) are a number (constant) or a schedule spec
``{name: cosine, lr: 0.05, total_steps: 30, ...}`` evaluated at the 0-based round
(:func:`distsched.schedules.from_spec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from distsched._checks import check_choice, check_int, check_non_negative, check_positive, check_range
from distsched.config import check_name, from_mapping

BUILTIN_DATA = ("digits", "synthetic", "stdlib_text")
BUILTIN_MODELS = ("mlp", "cnn", "gpt")


@dataclasses.dataclass
class DataConfig:
    name: str = "digits"
    """``digits`` (:func:`distsched.data.digits_flat`), ``synthetic`` (:func:`distsched.data.leaf_synthetic`),
    ``stdlib_text`` (:func:`distsched.data.stdlib_text_arrays`, natural clients: one per top-level module)
    or a factory ``package.module:function`` (the contract in :mod:`distsched.data`)."""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Passed to a built-in data set (``test_size``; ``alpha``, ``beta``, ``num_clients``...; ``context``,
    ``val_windows``...)."""
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Passed to a factory."""

    def __post_init__(self) -> None:
        if self.name == "factory":
            raise ValueError(
                "data.name 'factory' was replaced: give data.name: 'package.module:function' and data.kwargs"
            )
        check_name("data.name", self.name, BUILTIN_DATA)
        if self.name not in BUILTIN_DATA and self.params:
            raise ValueError("data.params is for the built-in data sets; a factory takes data.kwargs")

    def load(self, seed: int) -> Any:
        """The :class:`distsched.data.ArrayData`."""
        from distsched.data import load_arrays

        return load_arrays(self.name, self.params if self.name in BUILTIN_DATA else self.kwargs, seed=seed)


@dataclasses.dataclass
class PartitionConfig:
    scheme: str = "dirichlet"
    """``iid``, ``dirichlet``, ``shards``, ``power_law`` or ``natural`` (the data set's own split)."""
    num_clients: int = 100
    alpha: float = 0.5
    """Dirichlet concentration (small: strong label skew)."""
    shards_per_client: int = 2
    exponent: float = 1.5
    """Pareto exponent of the power-law sizes."""
    min_size: int = 1
    """Smallest client (dirichlet, power_law)."""

    def __post_init__(self) -> None:
        check_choice("partition.scheme", self.scheme, ("iid", "dirichlet", "shards", "power_law", "natural"))
        check_int("partition.num_clients", self.num_clients, 1)
        check_positive("partition.alpha", self.alpha)
        check_int("partition.shards_per_client", self.shards_per_client, 1)
        check_positive("partition.exponent", self.exponent)
        check_int("partition.min_size", self.min_size, 0)


@dataclasses.dataclass
class ModelConfig:
    name: str = "mlp"
    """``mlp``, ``cnn``, ``gpt`` (``kwargs``: layers, heads, dim, context) or a factory
    ``package.module:function`` called as
    ``fn(input_shape=..., num_classes=..., **kwargs)`` (the contract in :mod:`distsched.data`)."""
    hidden: list[int] = dataclasses.field(default_factory=lambda: [128])
    """Hidden widths of the MLP (64-128-10 on digits); the CNN's two channel counts."""
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Passed to ``gpt`` or to a factory."""

    def __post_init__(self) -> None:
        check_name("model.name", self.name, BUILTIN_MODELS)


@dataclasses.dataclass
class ClientConfig:
    lr: float | dict[str, Any] = 0.05
    """Client SGD learning rate by round: a number or a schedule spec."""
    batch_size: int = 10
    local_unit: str = "epochs"
    """``epochs`` or ``steps``."""
    local_work: int = 1
    """Local epochs (or steps) per round; the minimum under ``qsr``."""
    local_work_rule: str = "constant"
    """``constant`` or ``qsr``: ``H = min(max, max(local_work, floor((qsr_alpha / lr)^2)))``."""
    qsr_alpha: float = 0.0
    max_local_work: int = 100

    def __post_init__(self) -> None:
        check_int("client.batch_size", self.batch_size, 1)
        check_choice("client.local_unit", self.local_unit, ("epochs", "steps"))
        check_int("client.local_work", self.local_work, 1)
        check_choice("client.local_work_rule", self.local_work_rule, ("constant", "qsr"))


@dataclasses.dataclass
class SamplingConfig:
    cohort_size: int | None = None
    fraction: float | None = None
    poisson: bool = False
    availability: float = 1.0
    dropout: float = 0.0
    speed_sigma: float = 0.0
    """Per-client speed ``~ LogNormal(0, speed_sigma)``."""
    jitter_sigma: float = 0.0
    deadline: float | None = None
    """Round deadline in time units (a client at speed 1 does one local step per unit)."""
    late_policy: str = "drop"
    """``drop`` or ``downweight`` (weight ``deadline / time``)."""

    def __post_init__(self) -> None:
        if (self.cohort_size is None) == (self.fraction is None):
            raise ValueError("sampling: give exactly one of cohort_size or fraction")
        if self.cohort_size is not None:
            check_int("sampling.cohort_size", self.cohort_size, 1)
        else:
            check_range("sampling.fraction", self.fraction, 0.0, 1.0, low_open=True)
        check_range("sampling.availability", self.availability, 0.0, 1.0, low_open=True)
        check_range("sampling.dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_non_negative("sampling.speed_sigma", self.speed_sigma)
        check_non_negative("sampling.jitter_sigma", self.jitter_sigma)
        if self.deadline is not None:
            check_positive("sampling.deadline", self.deadline)
        check_choice("sampling.late_policy", self.late_policy, ("drop", "downweight"))


@dataclasses.dataclass
class StrategyConfig:
    name: str = "fedavg"
    """``fedavg``, ``fedprox``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedadagrad``, ``fedmedian``,
    ``trimmed_mean``, ``krum`` or ``fedbuff`` (asynchronous; a ``dp`` block wraps any of the first six)."""
    server_lr: float | dict[str, Any] = 1.0
    """Server learning rate by round: a number or a schedule spec."""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Strategy parameters (``mu``; ``momentum``; ``beta1``, ``beta2``, ``tau``; ``buffer_size``,
    ``max_concurrency``, ``staleness``, ``staleness_exponent``, ``lr_staleness_exponent``...)."""


@dataclasses.dataclass
class DPConfig:
    noise_multiplier: float | None = None
    """``z``, charged to the accountant each round; left out, it is planned so that ``rounds`` rounds
    spend exactly ``target_epsilon`` (:func:`distsched.privacy.plan`)."""
    clip_norm: float = 1.0
    """Initial clipping norm ``C`` of a client update."""
    target_epsilon: float | None = None
    """Budget: the run stops before a round that would exceed it."""
    delta: float = 1e-5
    accountant: str = "rdp"
    adaptive: bool = False
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_noise_std: float | None = None
    reproducible: bool = False
    """``true``: noise and cohorts from the config's seed (bit-identical reruns): the run is NOT private."""

    def __post_init__(self) -> None:
        if not isinstance(self.reproducible, bool):
            raise ValueError(f"dp.reproducible must be true or false, got {self.reproducible!r}")
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ValueError("dp: give noise_multiplier, target_epsilon or both")
        if self.noise_multiplier is not None:
            check_positive("dp.noise_multiplier", self.noise_multiplier)
        check_positive("dp.clip_norm", self.clip_norm)
        if self.target_epsilon is not None:
            check_positive("dp.target_epsilon", self.target_epsilon)
        check_range("dp.delta", self.delta, 0.0, 1.0, low_open=True, high_open=True)
        check_choice("dp.accountant", self.accountant, ("rdp", "prv", "gdp"))


@dataclasses.dataclass
class FedConfig:
    rounds: int
    sampling: SamplingConfig
    name: str = "fed"
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    partition: PartitionConfig = dataclasses.field(default_factory=PartitionConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    dp: DPConfig | None = None
    eval_every: int = 1
    checkpoint_every: int = 10
    num_actors: int | None = None
    """Ray actors; default one per CPU of the cluster."""
    chunks_per_round: int | None = None
    """Pieces the cohort is cut into (one result each); default one per actor."""
    output_dir: str = "runs"

    def __post_init__(self) -> None:
        check_int("rounds", self.rounds, 1)
        check_int("eval_every", self.eval_every, 1)
        check_int("checkpoint_every", self.checkpoint_every, 1)
        if self.num_actors is not None:
            check_int("num_actors", self.num_actors, 1)
        if self.chunks_per_round is not None:
            check_int("chunks_per_round", self.chunks_per_round, 1)
        if self.dp is not None and not self.sampling.poisson:
            raise ValueError("dp needs sampling.poisson: true (the accountant assumes Poisson sampling)")


def fed_config(data: Mapping[str, Any] | FedConfig) -> FedConfig:
    """A validated :class:`FedConfig` from a YAML mapping (or the config itself)."""
    if isinstance(data, FedConfig):
        return data
    model = data.get("model")
    if isinstance(model, Mapping) and ("factory" in model or "params" in model):
        raise ValueError(
            "model.factory/model.params were replaced: give model.name: 'package.module:function' (called as "
            "fn(input_shape=..., num_classes=..., **kwargs)) and model.kwargs"
        )
    return from_mapping(FedConfig, data)


def schedule_of(spec: float | Mapping[str, Any], key: str) -> Any:
    """A schedule from a number (constant) or a spec mapping."""
    from distsched import schedules as S

    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return S.constant(lr=float(spec))
    if not isinstance(spec, Mapping):
        raise ValueError(f"{key} must be a number or a schedule mapping, got {spec!r}")
    return S.from_spec(spec, _where=key)
