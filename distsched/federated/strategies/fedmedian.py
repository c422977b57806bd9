"""FedMedian: the coordinate-wise median of the client updates (Yin et al. 2018, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates"; Flower's ``FedMedian``):
``delta_j = median_k delta_kj`` (the mean of the two middle values for an even cohort)."""

from __future__ import annotations

import numpy as np

from distsched.federated.strategies.robust import RobustStrategy, check_updates


class FedMedian(RobustStrategy):
    name = "fedmedian"

    def aggregate(self, updates: np.ndarray) -> np.ndarray:
        return np.median(check_updates(updates), axis=0)
