"""The catalogue: config/CLI name -> schedule class, one name per class."""

from __future__ import annotations

from distsched.schedules.base import Schedule
from distsched.schedules.compose import Clamp, Join, Repeat, Scale, Warmup
from distsched.schedules.cosine import Constant, Cosine, CosineRestarts
from distsched.schedules.coupled import CosineBeta, CurriculumSpike, DiffusionCoupled, LinearBeta, PhaseShift
from distsched.schedules.cyclical import Cyclic, OneCycle
from distsched.schedules.decay import (
    Exponential,
    InversePower,
    InverseSqrt,
    InverseTime,
    Linear,
    MultiStep,
    Polynomial,
    Step,
)
from distsched.schedules.wsd import WarmupStableDecay

#: name -> schedule class, for the CLI and configs (``schedule: {name: cosine, lr: 0.1, ...}``).
CATALOGUE: dict[str, type[Schedule]] = {
    "constant": Constant,
    "step": Step,
    "multistep": MultiStep,
    "exponential": Exponential,
    "inverse_time": InverseTime,
    "inverse_power": InversePower,
    "polynomial": Polynomial,
    "linear": Linear,
    "inverse_sqrt": InverseSqrt,
    "cosine": Cosine,
    "cosine_restarts": CosineRestarts,
    "cyclic": Cyclic,
    "one_cycle": OneCycle,
    "wsd": WarmupStableDecay,
    # composition
    "warmup": Warmup,
    "join": Join,
    "scale": Scale,
    "clamp": Clamp,
    "repeat": Repeat,
    # coupled
    "phase_shift": PhaseShift,
    "linear_beta": LinearBeta,
    "cosine_beta": CosineBeta,
    "diffusion_coupled": DiffusionCoupled,
    "curriculum_spike": CurriculumSpike,
}

#: schedule class -> its catalogue name (the reverse of ``CATALOGUE``).
NAMES: dict[type[Schedule], str] = {cls: name for name, cls in CATALOGUE.items()}
