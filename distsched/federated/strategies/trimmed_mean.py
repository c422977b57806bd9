"""Coordinate-wise trimmed mean (Yin et al. 2018; Flower's ``FedTrimmedAvg``): for every coordinate,
drop the ``floor(beta * n)`` largest and smallest client values and average the rest,
``delta_j = mean(sort_k(delta_kj)[b : n - b])``, ``b = floor(beta * n)``, ``0 <= beta < 1/2``."""

from __future__ import annotations

import math

import numpy as np

from distsched._checks import check_range
from distsched.federated.strategies.robust import RobustStrategy, check_updates


class TrimmedMean(RobustStrategy):
    name = "trimmed_mean"

    def __init__(self, beta: float = 0.2) -> None:
        check_range("strategy.params.beta", beta, 0.0, 0.5, high_open=True)
        self.beta = float(beta)

    def aggregate(self, updates: np.ndarray) -> np.ndarray:
        u = check_updates(updates)
        b = math.floor(self.beta * len(u))
        return np.sort(u, axis=0)[b : len(u) - b].mean(axis=0)
