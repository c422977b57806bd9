"""Schedules: pure, picklable ``step -> value`` functions, their composition and the torch adapter.

>>> from distsched import schedules as S
>>> sched = S.warmup(S.cosine(lr=0.1, total_steps=1000, min_lr=1e-4), warmup_steps=100)
>>> round(sched(100), 6)
0.1
>>> S.from_spec(S.to_spec(sched)) == sched
True
"""

from distsched.schedules.base import Schedule
from distsched.schedules.catalogue import CATALOGUE
from distsched.schedules.compose import Clamp, Join, Repeat, Scale, Warmup, clamp, join, repeat, scale, warmup
from distsched.schedules.controlled import Controlled, Controller
from distsched.schedules.cosine import Constant, Cosine, CosineRestarts, constant, cosine, cosine_restarts
from distsched.schedules.coupled import (
    CosineBeta,
    CurriculumSpike,
    DiffusionCoupled,
    LinearBeta,
    PhaseShift,
    cosine_beta,
    curriculum_spike,
    diffusion_coupled,
    linear_beta,
    out_of_phase,
    phase_shift,
)
from distsched.schedules.cyclical import Cyclic, OneCycle, cyclic, one_cycle
from distsched.schedules.decay import (
    Exponential,
    InversePower,
    InverseSqrt,
    InverseTime,
    Linear,
    MultiStep,
    Polynomial,
    Step,
    exponential,
    inverse_power,
    inverse_sqrt,
    inverse_time,
    linear,
    multistep,
    polynomial,
    step,
)
from distsched.schedules.layerwise import by_children, layerwise
from distsched.schedules.peak import peak_lr
from distsched.schedules.spec import from_spec, to_spec
from distsched.schedules.torch_adapter import MULTIPLIER_KEY, ScheduledLR
from distsched.schedules.wsd import WarmupStableDecay, warmup_stable_decay, wsd

__all__ = [
    "Controlled",
    "Controller",
    "CATALOGUE",
    "MULTIPLIER_KEY",
    "Clamp",
    "Constant",
    "Cosine",
    "CosineBeta",
    "CosineRestarts",
    "CurriculumSpike",
    "Cyclic",
    "DiffusionCoupled",
    "Exponential",
    "InversePower",
    "InverseSqrt",
    "InverseTime",
    "Join",
    "Linear",
    "LinearBeta",
    "MultiStep",
    "OneCycle",
    "PhaseShift",
    "Polynomial",
    "Repeat",
    "Scale",
    "Schedule",
    "ScheduledLR",
    "Step",
    "Warmup",
    "WarmupStableDecay",
    "by_children",
    "clamp",
    "constant",
    "cosine",
    "cosine_beta",
    "cosine_restarts",
    "curriculum_spike",
    "cyclic",
    "diffusion_coupled",
    "exponential",
    "from_spec",
    "inverse_power",
    "inverse_sqrt",
    "inverse_time",
    "join",
    "layerwise",
    "linear",
    "linear_beta",
    "multistep",
    "one_cycle",
    "peak_lr",
    "out_of_phase",
    "phase_shift",
    "polynomial",
    "repeat",
    "scale",
    "step",
    "to_spec",
    "warmup",
    "warmup_stable_decay",
    "wsd",
]
