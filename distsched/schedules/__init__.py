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
from distsched.schedules.cosine import Constant, Cosine, constant, cosine
from distsched.schedules.spec import from_spec, to_spec
from distsched.schedules.torch_adapter import ScheduledLR

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
    "from_spec",
    "join",
    "repeat",
    "scale",
    "to_spec",
    "warmup",
]
