"""Krum and multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent"). With ``n`` updates of which at most ``f`` are Byzantine, the score of update ``i``
is the sum of its squared distances to its ``n - f - 2`` nearest other updates,
``s(i) = sum_{j in N_i} ||delta_i - delta_j||^2``; Krum returns the update of least score, multi-Krum
(``keep = m > 1``) the mean of the ``m`` updates of least score (Flower's ``Krum(num_clients_to_keep)``).
Ties go to the lower client index."""

from __future__ import annotations

import numpy as np

from distsched._checks import check_int
from distsched.federated.strategies.robust import RobustStrategy, check_updates


def krum_scores(updates: np.ndarray, num_malicious: int) -> np.ndarray:
    """``s(i)`` for every row of ``updates`` (needs ``n - f - 2 >= 1``)."""
    u = check_updates(updates)
    n = len(u)
    neighbours = n - num_malicious - 2
    if neighbours < 1:
        raise ValueError(f"krum needs n - f - 2 >= 1 (n={n} updates, f={num_malicious} malicious)")
    sq = (u * u).sum(axis=1)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (u @ u.T), 0.0)
    np.fill_diagonal(dist, np.inf)
    return np.sort(dist, axis=1)[:, :neighbours].sum(axis=1)


class Krum(RobustStrategy):
    name = "krum"

    def __init__(self, num_malicious: int = 0, keep: int = 1) -> None:
        check_int("strategy.params.num_malicious", num_malicious, 0)
        check_int("strategy.params.keep", keep, 1)
        self.num_malicious = int(num_malicious)
        self.keep = int(keep)

    def aggregate(self, updates: np.ndarray) -> np.ndarray:
        u = check_updates(updates)
        chosen = np.argsort(krum_scores(u, self.num_malicious), kind="stable")[: self.keep]
        return u[chosen].mean(axis=0)
