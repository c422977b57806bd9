"""One worker's training loop (model, data shard, optimizer, schedule, sync engine, checkpoints,
metrics), identical under torchrun and under Ray Train, and its typed YAML config."""

from distsched.train.config import (
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    TrainConfig,
    config_from_mapping,
    config_to_mapping,
    load_config,
)
from distsched.train.controller import CONTROLLERS, ControllerConfig, build_controller, update_controller
from distsched.train.loop import FaultInjection, build_training, train_step, train_worker
from distsched.train.run import preflight, prepare_run, read_summary, run_processes, run_torchrun
from distsched.train.session import LocalSession, Session
from distsched.train.sync_config import SyncConfig

__all__ = [
    "CONTROLLERS",
    "CheckpointConfig",
    "ControllerConfig",
    "DataConfig",
    "FaultInjection",
    "LocalSession",
    "ModelConfig",
    "OptimizerConfig",
    "Session",
    "SyncConfig",
    "TrainConfig",
    "build_controller",
    "build_training",
    "config_from_mapping",
    "config_to_mapping",
    "load_config",
    "preflight",
    "prepare_run",
    "read_summary",
    "run_processes",
    "run_torchrun",
    "train_step",
    "train_worker",
    "update_controller",
]
