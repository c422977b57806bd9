"""Client sampling: fixed cohorts or Poisson sampling, availability, dropout, stragglers.

Every draw is a pure function of ``(seed, round)``: a resumed run draws the same cohorts without
storing generator state, and the cohort does not depend on which actor trains whom.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from distsched._checks import check_choice, check_int, check_non_negative, check_range


def round_rng(seed: int, round_: int, stream: int) -> np.random.Generator:
    """An independent generator for ``(seed, round, stream)`` (NumPy ``SeedSequence`` spawning)."""
    return np.random.default_rng(np.random.SeedSequence([seed, round_, stream]))


_COHORT, _DROPOUT, _SPEED, _JITTER = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class CohortDraw:
    """One round's draw: ``sampled`` clients, and among them those that ``dropped`` out (sorted ids)."""

    sampled: np.ndarray
    dropped: np.ndarray

    @property
    def participants(self) -> np.ndarray:
        return np.setdiff1d(self.sampled, self.dropped, assume_unique=True)


@dataclasses.dataclass(frozen=True)
class ClientSampler:
    """Draws each round's cohort among ``num_clients``.

    * fixed: ``cohort_size`` clients (or ``round(fraction * N)``) uniformly without replacement among
      the available ones;
    * ``poisson=True``: each client joins independently with probability ``q = cohort_size / N``
      (``fraction``), the sampling that DP accounting assumes (Abadi et al. 2016; McMahan et al. 2018);
    * ``availability``: each client is reachable in a round with this probability (fixed cohorts only);
    * ``dropout``: a sampled client fails to report with this probability.

    Cost per round: ``O(cohort)`` for fixed and Poisson cohorts (NumPy's ``choice`` without
    replacement uses Floyd's algorithm when the cohort is under 1/50 of the clients), dropout is drawn
    for the cohort only; ``availability < 1`` draws one uniform per registered client (``8 N`` bytes).
    """

    num_clients: int
    cohort_size: int | None = None
    fraction: float | None = None
    poisson: bool = False
    availability: float = 1.0
    dropout: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("num_clients", self.num_clients, 1)
        if (self.cohort_size is None) == (self.fraction is None):
            raise ValueError("sampling: give exactly one of cohort_size or fraction")
        if self.cohort_size is not None:
            check_int("cohort_size", self.cohort_size, 1)
            if self.cohort_size > self.num_clients:
                raise ValueError(f"cohort_size must be in [1, {self.num_clients}], got {self.cohort_size!r}")
        else:
            check_range("fraction", self.fraction, 0.0, 1.0, low_open=True)
        check_range("availability", self.availability, 0.0, 1.0, low_open=True)
        check_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        if self.poisson and self.availability < 1.0:
            raise ValueError("availability must be 1.0 with poisson sampling (DP accounting assumes it)")

    @property
    def expected_cohort(self) -> float:
        """``E|cohort|`` before dropout: ``cohort_size`` or ``fraction * N``."""
        if self.cohort_size is not None:
            return float(self.cohort_size)
        return float(self.fraction) * self.num_clients

    @property
    def sample_rate(self) -> float:
        """``q = expected cohort / N``, the per-round sampling rate used by the accountant."""
        return self.expected_cohort / self.num_clients

    def sample(self, round_: int) -> CohortDraw:
        rng = round_rng(self.seed, round_, _COHORT)
        n = self.num_clients
        if self.poisson:
            k = int(rng.binomial(n, self.sample_rate))
            chosen = rng.choice(n, size=k, replace=False) if k else np.zeros(0, dtype=np.int64)
        else:
            k = max(1, round(self.expected_cohort))
            if self.availability < 1.0:
                pool = np.flatnonzero(rng.random(n) < self.availability)
                chosen = rng.choice(pool, size=min(k, len(pool)), replace=False)
            else:
                chosen = rng.choice(n, size=k, replace=False)
        chosen = np.sort(np.asarray(chosen, dtype=np.int64))
        if self.dropout > 0.0 and len(chosen):
            drop_rng = round_rng(self.seed, round_, _DROPOUT)
            dropped = chosen[drop_rng.random(len(chosen)) < self.dropout]
        else:
            dropped = np.zeros(0, dtype=np.int64)
        return CohortDraw(chosen, dropped)


@dataclasses.dataclass(frozen=True)
class Stragglers:
    """Per-client speeds and a round deadline.

    Client ``k`` has a fixed speed ``s_k ~ LogNormal(0, speed_sigma)`` (steps per time unit) and a
    per-round jitter ``e ~ LogNormal(0, jitter_sigma)``; its round time is ``steps / s_k * e``.
    An update finishing after ``deadline`` is dropped (``policy="drop"``) or weighted by
    ``deadline / time`` (``policy="downweight"``). ``deadline=None``: nobody is late.
    """

    num_clients: int
    speed_sigma: float = 0.0
    jitter_sigma: float = 0.0
    deadline: float | None = None
    policy: str = "drop"
    seed: int = 0

    def __post_init__(self) -> None:
        check_non_negative("speed_sigma", self.speed_sigma)
        check_non_negative("jitter_sigma", self.jitter_sigma)
        if self.deadline is not None:
            check_range("deadline", self.deadline, 0.0, float("inf"), low_open=True)
        check_choice("policy", self.policy, ("drop", "downweight"))

    def speeds(self, clients: np.ndarray) -> np.ndarray:
        """Fixed speeds of ``clients`` (one generator per client, so any subset is consistent)."""
        if self.speed_sigma == 0.0:
            return np.ones(len(clients))
        return np.array(
            [
                np.random.default_rng(np.random.SeedSequence([self.seed, _SPEED, int(c), 0])).lognormal(
                    0.0, self.speed_sigma
                )
                for c in clients
            ]
        )

    def times(self, round_: int, clients: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Simulated completion times of ``clients`` doing ``steps`` local steps each."""
        jitter = np.ones(len(clients))
        if self.jitter_sigma > 0.0:
            jitter = round_rng(self.seed, round_, _JITTER).lognormal(0.0, self.jitter_sigma, len(clients))
        return np.asarray(steps, dtype=np.float64) / self.speeds(clients) * jitter

    def weights(self, times: np.ndarray) -> np.ndarray:
        """Weight multiplier per client: 1 on time, 0 (drop) or ``deadline / time`` when late."""
        if self.deadline is None:
            return np.ones(len(times))
        late = times > self.deadline
        if self.policy == "drop":
            return np.where(late, 0.0, 1.0)
        return np.where(late, self.deadline / np.maximum(times, 1e-300), 1.0)


def sample_idle(seed: int, wave: int, count: int, busy: np.ndarray, num_clients: int) -> np.ndarray:
    """``count`` clients drawn uniformly without replacement among those not ``busy`` (sorted ids), for
    launch ``wave`` of an asynchronous run: the first ``count`` idle ones of ``count + |busy|`` drawn in
    random order (a uniform ordered sample, so its idle members in order are a uniform sample of the idle
    clients); with nobody busy it is the fixed cohort :meth:`ClientSampler.sample` draws for round ``wave``.
    Cost ``O(count + |busy|)``."""
    busy = np.asarray(busy, dtype=np.int64)
    if count + len(busy) > num_clients:
        raise ValueError(f"cannot launch {count} clients with {len(busy)} of {num_clients} busy")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    drawn = round_rng(seed, wave, _COHORT).choice(num_clients, size=count + len(busy), replace=False)
    idle = drawn[~np.isin(drawn, busy)][:count]
    return np.sort(idle.astype(np.int64))
