"""The catalogue: config/CLI name -> schedule class, one name per class."""

from __future__ import annotations

from distsched.schedules.base import Schedule
from distsched.schedules.compose import Clamp, Join, Repeat, Scale, Warmup
from distsched.schedules.cosine import Constant, Cosine

#: name -> schedule class, for the CLI and configs (``schedule: {name: cosine, lr: 0.1, ...}``).
CATALOGUE: dict[str, type[Schedule]] = {
    "constant": Constant,
    "cosine": Cosine,
    # composition
    "warmup": Warmup,
    "join": Join,
    "scale": Scale,
    "clamp": Clamp,
    "repeat": Repeat,
}

#: schedule class -> its catalogue name (the reverse of ``CATALOGUE``).
NAMES: dict[type[Schedule], str] = {cls: name for name, cls in CATALOGUE.items()}
