"""Federated simulation, run by an executor it is given (in-process here, Ray actors from
:mod:`distsched.cluster`): sampling, strategies, DP-FedAvg (data sets, partitions and
models live in :mod:`distsched.data`).

>>> from distsched.federated import simulate
>>> summary = simulate("examples/fed_digits.yaml", rounds=3)   # doctest: +SKIP
"""

from distsched.federated.buffered import BufferedClients
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
from distsched.federated.dp import DPFedAvg, centred_unclipped_fraction, next_clip_norm
from distsched.federated.executor import Executor, ExecutorFactory, InProcessExecutor, WorkerSetup
from distsched.federated.sampling import ClientSampler, CohortDraw, Stragglers
from distsched.federated.simulation import RoundRecord, Simulation, simulate
from distsched.federated.strategies import (
    STRATEGIES,
    DifferentialPrivacy,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedProx,
    FedYogi,
    Strategy,
    build_strategy,
)
from distsched.federated.worker import ChunkResult, ChunkTask, ClientWorker, to_csr

__all__ = [
    "STRATEGIES",
    "BufferedClients",
    "ChunkResult",
    "ChunkTask",
    "ClientConfig",
    "ClientSampler",
    "ClientWorker",
    "CohortDraw",
    "DPConfig",
    "DPFedAvg",
    "DifferentialPrivacy",
    "DataConfig",
    "Executor",
    "ExecutorFactory",
    "InProcessExecutor",
    "WorkerSetup",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedConfig",
    "FedProx",
    "FedYogi",
    "LocalWork",
    "ModelConfig",
    "PartitionConfig",
    "RoundRecord",
    "SamplingConfig",
    "Simulation",
    "Strategy",
    "StrategyConfig",
    "Stragglers",
    "build_strategy",
    "client_seed",
    "evaluate",
    "fed_config",
    "latest_checkpoint",
    "load_checkpoint",
    "centred_unclipped_fraction",
    "next_clip_norm",
    "save_checkpoint",
    "simulate",
    "to_csr",
    "train_client",
]
