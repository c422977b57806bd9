"""Feedback controllers: stateful multipliers on a schedule (``schedule x controller``).

>>> from distsched import schedules as S
>>> from distsched.control import Controlled, PIDController
>>> ctl = PIDController(kp=1.0)
>>> lr = Controlled(S.constant(0.1), ctl)
>>> _ = ctl.update(1.0); _ = ctl.update(1.5)   # the loss rose by 0.5
>>> round(lr(2), 6)                            # 0.1 * (1 - 1.0 * 0.5)
0.05
"""

from distsched.control.conflict import GradientConflictScaler, pairwise_cosines, task_gradients
from distsched.control.curriculum import CurriculumPhases
from distsched.control.pid import PIDController
from distsched.control.plateau import ReduceOnPlateau, WarmRestartOnPlateau
from distsched.schedules.controlled import Controlled, Controller

#: ``controller.name`` of a training config -> controller class (the loss-driven ones; the config is
#: built by :func:`distsched.config.build`).
CONTROLLERS: dict[str, type[Controller]] = {
    "pid": PIDController,
    "plateau": ReduceOnPlateau,
    "warm_restart": WarmRestartOnPlateau,
    "curriculum": CurriculumPhases,
}

__all__ = [
    "CONTROLLERS",
    "Controlled",
    "Controller",
    "CurriculumPhases",
    "GradientConflictScaler",
    "PIDController",
    "ReduceOnPlateau",
    "WarmRestartOnPlateau",
    "pairwise_cosines",
    "task_gradients",
]
