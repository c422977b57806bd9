"""Server strategies, one file each behind :class:`Strategy`; ``build_strategy(name, **params)``.
:class:`DifferentialPrivacy` wraps one of them (the config's ``dp:`` block)."""

from __future__ import annotations

from typing import Any

from distsched.config import build
from distsched.federated.strategies.base import Strategy
from distsched.federated.strategies.differential_privacy import DifferentialPrivacy
from distsched.federated.strategies.fedadagrad import FedAdagrad
from distsched.federated.strategies.fedadam import FedAdam
from distsched.federated.strategies.fedavg import FedAvg
from distsched.federated.strategies.fedavgm import FedAvgM
from distsched.federated.strategies.fedbuff import FedBuff
from distsched.federated.strategies.fedmedian import FedMedian
from distsched.federated.strategies.fedprox import FedProx
from distsched.federated.strategies.fedyogi import FedYogi
from distsched.federated.strategies.krum import Krum
from distsched.federated.strategies.robust import RobustStrategy
from distsched.federated.strategies.trimmed_mean import TrimmedMean

#: name -> strategy class (a new strategy is one file plus one line here).
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, FedMedian, TrimmedMean, Krum, FedBuff)
}


def build_strategy(name: str, **params: Any) -> Strategy:
    """The strategy called ``name`` with its parameters (the config's ``strategy.params``), built by
    :func:`distsched.config.build` from :data:`STRATEGIES`, as sync rules and controllers are: an unknown
    name, an unknown or missing parameter, a flag that is not true/false and the strategy's own check
    raise one ``ValueError`` naming ``strategy.name`` or ``strategy.params.<key>``."""
    return build(STRATEGIES, {"name": name, **params}, "strategy", at="strategy.params")


__all__ = [
    "STRATEGIES",
    "DifferentialPrivacy",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedProx",
    "FedYogi",
    "Krum",
    "RobustStrategy",
    "Strategy",
    "TrimmedMean",
    "build_strategy",
]
