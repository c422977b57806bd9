"""Federated simulation on Ray actors: data sets, partitions, sampling, strategies, DP-FedAvg.

>>> from distsched.federated import simulate
>>> summary = simulate("examples/fed_digits.yaml", rounds=3)   # doctest: +SKIP
"""

from distsched.federated.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from distsched.federated.client import LocalWork, client_seed, evaluate, train_client
from distsched.federated.config import (
    ClientConfig,
    DataConfig,
    DPConfig,
    FedConfig,
    ModelConfig,
    PartitionConfig,
    SamplingConfig,
    StrategyConfig,
    fed_config,
)
from distsched.federated.datasets import FedData, digits, from_factory, load_dataset, synthetic
from distsched.federated.dp import DPFedAvg, centred_unclipped_fraction, next_clip_norm
from distsched.federated.models import build_model, flat_params, mlp
from distsched.federated.partitions import (
    PartitionStats,
    dirichlet,
    iid,
    make_partition,
    partition_stats,
    plot_partition,
    power_law,
    shards,
)
from distsched.federated.pool import ActorPool
from distsched.federated.sampling import ClientSampler, CohortDraw, Stragglers
from distsched.federated.simulation import RoundRecord, Simulation, simulate
from distsched.federated.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
    build_strategy,
)
from distsched.federated.worker import ChunkResult, ChunkTask, ClientWorker, to_csr

__all__ = [
    "STRATEGIES",
    "ActorPool",
    "ChunkResult",
    "ChunkTask",
    "ClientConfig",
    "ClientSampler",
    "ClientWorker",
    "CohortDraw",
    "DPConfig",
    "DPFedAvg",
    "DataConfig",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedConfig",
    "FedData",
    "FedProx",
    "FedYogi",
    "LocalWork",
    "ModelConfig",
    "PartitionConfig",
    "PartitionStats",
    "RoundRecord",
    "SamplingConfig",
    "Simulation",
    "Strategy",
    "StrategyConfig",
    "Stragglers",
    "build_model",
    "build_strategy",
    "client_seed",
    "digits",
    "dirichlet",
    "evaluate",
    "fed_config",
    "flat_params",
    "from_factory",
    "iid",
    "latest_checkpoint",
    "load_checkpoint",
    "load_dataset",
    "make_partition",
    "mlp",
    "centred_unclipped_fraction",
    "next_clip_norm",
    "partition_stats",
    "plot_partition",
    "power_law",
    "save_checkpoint",
    "shards",
    "simulate",
    "synthetic",
    "to_csr",
    "train_client",
]
