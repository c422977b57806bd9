"""Privacy audit in one training run: an empirical lower bound on epsilon from white-box gradient canaries.

Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1) training run" (NeurIPS; arXiv:2305.08846).
``m`` canaries are added to the data set, each independently with probability 1/2 (``S_i = +1``) or not
(``S_i = -1``). After training the auditor scores every canary from what the run released, guesses
"in" for the ``k`` highest scores and "out" for the ``k`` lowest, abstains on the rest, and counts the
correct guesses ``v`` among its ``r = 2k`` guesses. If the run is ``(eps, delta)``-DP (Theorem 5.2)::

    P[v correct or more] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,
    f(x) = P[Binomial(r, e^eps / (1 + e^eps)) >= x]

so every ``eps`` whose bound is below the significance ``1 - confidence`` is refuted: the largest one is
the lower bound (:func:`epsilon_lower_bound`). The binomial tails and the root come from scipy.

The canaries here are white-box **gradient canaries** (:class:`GradientCanaries`): canary ``i`` is the
vector ``s_i C e_{j_i}`` (a random coordinate ``j_i``, a random sign, norm ``C`` = ``max_grad_norm``: the
Dirac canary of Nasr et al. 2023, so that canaries do not interfere). An included canary is an example
of the data set: at every step it is Poisson-sampled at the run's rate ``q`` and, when sampled, its
(already clipped) gradient joins the clipped-gradient sum just before the real Opacus ``DPOptimizer`` adds
its noise, with the noise generator of the run. The auditor sees the released noisy sums ``g_t`` (every
step, never which examples were sampled) and scores canary ``i`` with

* ``sum``:    ``sum_t <g_t, c_i> / sigma_t^2`` (the Gaussian likelihood-ratio direction), and
* ``spikes``: the same after subtracting a running median of ``<g_t, c_i>`` over ``MEDIAN_WINDOW`` steps (robust
  to the slow drift of the data's own gradient at that coordinate; it finds noise far below the claim),

and ``spikes`` also after subtracting the noise that a **known seed** predicts (an attacker who read the seed from
the config replays the generator): a run whose noise is predictable is not private, and this shows it.
All ``(score, seed, k)`` choices are tested at once with a Bonferroni correction, so the reported bound
holds with the stated confidence whatever choice wins.

What this proves: a lower bound above the accountant's epsilon (verdict ``VIOLATION``) means, with the
stated confidence, that the implementation does not give the claimed ``(eps, delta)``. A bound at or below
it (``PASS``) proves nothing about privacy: the audit is one run, one attack, and loose under subsampling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage, optimize, special, stats
from torch import nn
from torch.utils.data import Dataset

from distsched._checks import check_int, check_range

#: steps of the running median that the ``spikes`` score subtracts.
MEDIAN_WINDOW = 25
#: fractions of the canaries guessed (half "in" from the top scores, half "out" from the bottom).
GUESS_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
SCORES: tuple[str, ...] = ("sum", "spikes")
PASS, VIOLATION = "PASS", "VIOLATION"


# ----------------------------------------------------------------------------------------- statistics
def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    check_int("canaries", canaries, 1)
    check_int("guesses", guesses, 0)
    check_int("correct", correct, 0)
    if not correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}")


def p_value(canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Largest probability of ``correct`` or more right guesses out of ``guesses`` (abstaining on the other
    canaries) under an ``(epsilon, delta)``-DP mechanism, Steinke et al. 2023, Theorem 5.2:
    ``f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i`` with ``f(x) = P[Bin(r, e^eps/(1+e^eps)) >= x]``
    (for ``i > v``, ``f(v - i) = 1`` and the ratio only falls, so ``i <= v`` suffices)."""
    _check_counts(canaries, guesses, correct)
    check_range("epsilon", epsilon, 0.0, math.inf)
    check_range("delta", delta, 0.0, 1.0)
    p_right = float(special.expit(epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, p_right))  # f(v) = P[Bin >= v]
    if delta == 0.0 or correct == 0:
        return min(1.0, tail)
    i = np.arange(1, correct + 1)
    gains = (stats.binom.sf(correct - i - 1, guesses, p_right) - tail) / i
    return min(1.0, tail + 2.0 * canaries * delta * float(np.max(gains)))


def epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest ``eps`` refuted at ``1 - confidence`` by ``correct`` of ``guesses`` right guesses: the root
    of ``p_value(eps) = 1 - confidence`` (``scipy.optimize.brentq``; the p-value grows with ``eps``), 0 when
    even ``eps = 0`` is not refuted, ``inf`` beyond 1000."""
    _check_counts(canaries, guesses, correct)
    check_range("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    alpha = 1.0 - confidence

    def excess(eps: float) -> float:
        return p_value(canaries, guesses, correct, eps, delta) - alpha

    if excess(0.0) > 0:
        return 0.0
    hi = 1.0
    while excess(hi) <= 0:
        if hi > 1e3:  # a bound this large means "no privacy"; stop searching
            return math.inf
        hi *= 2.0
    return float(optimize.brentq(excess, hi / 2.0 if hi > 1.0 else 0.0, hi, xtol=1e-9))


@dataclasses.dataclass(frozen=True)
class Guesses:
    """One test: ``correct`` right among ``guesses`` (top and bottom ``guesses / 2`` scores)."""

    score: str
    guesses: int
    correct: int
    epsilon_lower: float


def count_correct(scores: np.ndarray, included: np.ndarray, k: int) -> int:
    """Right guesses when the ``k`` highest scores are guessed "in" and the ``k`` lowest "out"."""
    if not 0 <= 2 * k <= len(scores):
        raise ValueError(f"k must be in [0, {len(scores) // 2}] (k in, k out of {len(scores)}), got {k}")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return int(included[order[:k]].sum() + (~included[order[len(order) - k:]]).sum()) if k else 0


def best_lower_bound(
    scores: Mapping[str, np.ndarray],
    included: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    fractions: Sequence[float] = GUESS_FRACTIONS,
) -> tuple[Guesses, int]:
    """The best lower bound over every score in ``scores`` and every guess count ``2k = f m``, each tested
    at ``(1 - confidence) / n`` for ``n`` tests (Bonferroni): the maximum is a valid bound at ``confidence``.
    Returns it and ``n``."""
    included = np.asarray(included, dtype=bool)
    m = len(included)
    ks = sorted({max(1, int(f * m) // 2) for f in fractions if int(f * m) // 2 >= 1})
    tests = len(scores) * len(ks)
    if not tests:
        raise ValueError(f"need at least 2 canaries and one score, got {m} canaries and {len(scores)} scores")
    each = 1.0 - (1.0 - confidence) / tests
    best: Guesses | None = None
    for name, s in scores.items():
        if len(s) != m:
            raise ValueError(f"score {name!r} has {len(s)} values for {m} canaries")
        for k in ks:
            v = count_correct(s, included, k)
            eps = epsilon_lower_bound(m, 2 * k, v, delta, each)
            if best is None or eps > best.epsilon_lower:
                best = Guesses(name, 2 * k, v, eps)
    assert best is not None
    return best, tests


def detectable_epsilon(canaries: int, delta: float, confidence: float, tests: int,
                       fractions: Sequence[float] = GUESS_FRACTIONS) -> float:
    """The largest lower bound the audit can report at all (every guess right at the largest guess count):
    a claimed epsilon above it cannot be refuted by this many canaries."""
    r = 2 * (int(max(fractions) * canaries) // 2)
    return epsilon_lower_bound(canaries, r, r, delta, 1.0 - (1.0 - confidence) / tests) if r else 0.0


# ----------------------------------------------------------------------------------------- canaries
class GradientCanaries:
    """``m`` Dirac gradient canaries on the parameters of an Opacus ``DPOptimizer``.

    Public (what the auditor knows): coordinate ``j_i`` and sign ``s_i`` of every canary. Secret (the
    mechanism's randomness): which canaries are included (``S_i``) and at which steps each is sampled.
    :meth:`install` wraps the optimizer's ``add_noise``: the sampled included canaries join
    ``p.summed_grad`` (the clipped-gradient sum), then the real ``add_noise`` runs, and the released noisy
    sum at the canary coordinates is recorded with the nominal ``noise_multiplier`` of the step.
    """

    def __init__(self, params: Sequence[torch.Tensor], count: int, max_grad_norm: float, sample_rate: float,
                 rng: np.random.Generator) -> None:
        self.params = list(params)
        sizes = [p.numel() for p in self.params]
        dim = sum(sizes)
        self.count = check_int("canaries", count, 2)
        if count > dim:
            raise ValueError(f"canaries must be <= the model's {dim} trainable parameters, got {count}")
        self.max_grad_norm = float(max_grad_norm)
        self.sample_rate = float(sample_rate)
        self.coords = np.sort(rng.choice(dim, size=count, replace=False))
        self.signs = rng.choice(np.array([-1.0, 1.0]), size=count)
        self._rng = rng
        self._included = rng.random(count) < 0.5
        offsets = np.cumsum([0, *sizes])
        self._owner = np.searchsorted(offsets, self.coords, side="right") - 1  # parameter of each canary
        self._local = [torch.as_tensor(self.coords[self._owner == k] - offsets[k]) for k in range(len(sizes))]
        self.released: list[np.ndarray] = []
        self.sigmas: list[float] = []
        self.times_sampled = np.zeros(count, dtype=np.int64)

    @property
    def included(self) -> np.ndarray:
        """``S_i = +1``: read this only to count right guesses, never to score."""
        return self._included

    def _add_sampled(self) -> None:
        sampled = self._included & (self._rng.random(self.count) < self.sample_rate)
        self.times_sampled += sampled
        values = torch.as_tensor(self.signs * self.max_grad_norm * sampled)
        for k, p in enumerate(self.params):
            mask = self._owner == k
            if mask.any():
                flat = p.summed_grad.view(-1)
                flat.index_add_(0, self._local[k].to(flat.device), values[mask].to(flat.dtype).to(flat.device))

    def _record(self, sigma: float) -> None:
        row = np.empty(self.count)
        for k, p in enumerate(self.params):
            mask = self._owner == k
            if mask.any():
                row[mask] = p.grad.detach().reshape(-1)[self._local[k].to(p.grad.device)].double().cpu().numpy()
        self.released.append(row)
        self.sigmas.append(float(sigma))

    def install(self, optimizer: Any) -> None:
        """Wrap ``optimizer.add_noise`` (an Opacus ``DPOptimizer``): canaries in, real noise, record."""
        inner = optimizer.add_noise

        def add_noise() -> None:
            self._add_sampled()
            inner()
            self._record(optimizer.noise_multiplier)

        optimizer.add_noise = add_noise

    def replay_noise(self, optimizer: Any, seed: int) -> np.ndarray:
        """The noise at the canary coordinates, step by step, that a ``torch.Generator`` seeded with ``seed``
        gives when Opacus draws it as the run did (same parameters, order, std and ``secure_mode``)."""
        from opacus.optimizers.optimizer import _generate_noise

        device = self.params[0].device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        out = np.empty((len(self.sigmas), self.count))
        for t, sigma in enumerate(self.sigmas):
            for k, p in enumerate(self.params):
                noise = _generate_noise(std=sigma * optimizer.max_grad_norm, reference=p.detach(), generator=gen,
                                        secure_mode=optimizer.secure_mode)
                mask = self._owner == k
                if mask.any():
                    out[t, mask] = noise.reshape(-1)[self._local[k].to(device)].double().cpu().numpy()
        return out

    def scores(self, released: np.ndarray) -> dict[str, np.ndarray]:
        """``sum`` and ``spikes`` scores (see the module docstring) from released values ``(steps, m)``."""
        weights = 1.0 / np.square(np.asarray(self.sigmas))[:, None]
        signed = released * self.signs
        trend = ndimage.median_filter(signed, size=(MEDIAN_WINDOW, 1), mode="nearest")
        return {"sum": (signed * weights).sum(axis=0), "spikes": ((signed - trend) * weights).sum(axis=0)}


# ----------------------------------------------------------------------------------------- the run
@dataclasses.dataclass(frozen=True)
class AuditReport:
    """What :func:`audit_training` found; ``verdict`` is ``VIOLATION`` when ``epsilon_lower`` exceeds
    ``epsilon_accountant`` (the claim is refuted at ``confidence``), else ``PASS`` (no proof of privacy)."""

    verdict: str
    epsilon_lower: float
    epsilon_accountant: float
    confidence: float
    delta: float
    canaries: int
    guesses: int
    correct: int
    score: str
    tests: int
    detectable_epsilon: float
    steps: int
    sample_rate: float
    noise_multiplier: float
    accountant: str
    known_seeds: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, target)


def audit_training(
    config: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    total_steps: int,
    seed: int = 0,
    canaries: int = 1000,
    confidence: float = 0.95,
    known_noise_seeds: Iterable[int] = (),
    lr_schedule: Callable[[int], float] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _cross_entropy,
    canary_seed: int | None = None,
    tamper: Callable[[Any], None] | None = None,
) -> AuditReport:
    """Train ``total_steps`` DP-SGD steps on ``indices`` of ``dataset`` with canaries and audit the run.

    The DP-SGD is distsched's own (:func:`distsched.privacy.attach_privacy` with the ``privacy`` block
    ``config``, one worker: Poisson batches at ``q = batch_size / len(indices)``, the planned noise
    schedule, Opacus' ``DPOptimizer`` and its noise generator, the accountant and the budget guard).
    ``known_noise_seeds``: seeds the auditor believes the noise generator has (each adds a seed-subtracted
    version of both scores). ``canary_seed``: seeds the canaries (default: secret). ``tamper`` receives the
    :class:`~distsched.privacy.PrivateTraining` before the canaries are installed (tests break the
    mechanism with it). Epsilon is compared with the accountant's for the steps taken, at ``config.delta``.
    """
    from distsched.data.batches import examples_in
    from distsched.privacy.config import privacy_config
    from distsched.privacy.randomness import secret_seed
    from distsched.privacy.training import attach_privacy

    cfg = privacy_config(config)
    if cfg.clipping in ("auto", "ghost"):  # the canaries go into Opacus' per-example clipped sum: hooks
        cfg = dataclasses.replace(cfg, clipping="hooks")
    check_range("confidence", confidence, 0.0, 1.0, low_open=True, high_open=True)
    training, loader = attach_privacy(cfg, model, optimizer, dataset, [np.asarray(indices)], 0,
                                      batch_size=batch_size, total_steps=total_steps, seed=seed)
    if tamper is not None:
        tamper(training)
    dp = training.optimizer
    rng = np.random.default_rng(secret_seed() if canary_seed is None else canary_seed)
    canary_set = GradientCanaries(dp.params, canaries, dp.max_grad_norm, training.sample_rate, rng)
    canary_set.install(dp)
    device = next(training.model.parameters()).device
    batches = iter(loader)
    training.model.train()
    steps = 0
    for t in range(total_steps):
        if not training.allows_next_step():
            break
        if lr_schedule is not None:  # the trajectory only: the released gradients do not depend on the LR
            for group in dp.param_groups:
                group["lr"] = float(lr_schedule(t)) * training.lr_factor
        x, y = next(batches)
        if examples_in(y) == 0:  # an empty Poisson draw: the noise-only step, as the training loop takes it
            training.empty_step()
        else:
            dp.zero_grad(set_to_none=True)
            loss_fn(training.model(x.to(device)), y.to(device)).backward()
            dp.step()
        training.after_step()
        steps += 1
    if steps == 0:
        raise ValueError("the budget allows no step: nothing to audit")

    released = np.asarray(canary_set.released)
    scores = dict(canary_set.scores(released))
    seeds = list(dict.fromkeys(int(s) for s in known_noise_seeds))
    for n, s in enumerate(seeds):  # without the noise, the spikes score is the sharper one
        spikes = canary_set.scores(released - canary_set.replay_noise(dp, s))["spikes"]
        scores[f"spikes, seed {n}" if len(seeds) > 1 else "spikes, known seed"] = spikes
    best, tests = best_lower_bound(scores, canary_set.included, cfg.delta, confidence)
    eps_acc = float(training.epsilon)
    return AuditReport(
        verdict=VIOLATION if best.epsilon_lower > eps_acc else PASS,
        epsilon_lower=best.epsilon_lower, epsilon_accountant=eps_acc, confidence=confidence, delta=cfg.delta,
        canaries=canaries, guesses=best.guesses, correct=best.correct, score=best.score, tests=tests,
        detectable_epsilon=detectable_epsilon(canaries, cfg.delta, confidence, tests), steps=steps,
        sample_rate=training.sample_rate, noise_multiplier=float(training.noise.schedule(0)),
        accountant=cfg.accountant, known_seeds=len(seeds),
    )
