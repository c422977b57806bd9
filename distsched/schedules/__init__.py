"""Schedules: pure, picklable ``step -> value`` functions, their composition and the torch adapter.

>>> from distsched import schedules as S
>>> sched = S.warmup(S.cosine(lr=0.1, total_steps=1000, min_lr=1e-4), warmup_steps=100)
>>> round(sched(100), 6)
0.1
"""

from distsched.schedules.base import Schedule
from distsched.schedules.compose import Clamp, Join, Repeat, Scale, Warmup, clamp, join, repeat, scale, warmup
from distsched.schedules.cosine import Constant, Cosine, constant, cosine
from distsched.schedules.torch_adapter import ScheduledLR

#: name -> schedule class, for the CLI and configs (``schedule: {name: cosine, lr: 0.1, ...}``).
CATALOGUE: dict[str, type[Schedule]] = {
    "constant": Constant,
    "cosine": Cosine,
}

__all__ = [
    "CATALOGUE",
    "Clamp",
    "Constant",
    "Cosine",
    "Join",
    "Repeat",
    "Scale",
    "Schedule",
    "ScheduledLR",
    "Warmup",
    "clamp",
    "constant",
    "cosine",
    "join",
    "repeat",
    "scale",
    "warmup",
]
