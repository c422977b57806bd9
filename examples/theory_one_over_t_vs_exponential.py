"""On a noisy strongly convex problem ``1/t`` converges while exponential decay stalls short of the optimum.

SGD on ``f(x) = mu/2 |x|^2`` with gradient noise ``sigma``: ``lr_t = 1/(mu (t + t0))`` satisfies the
Robbins-Monro conditions and ``E|x_t|^2 = O(sigma^2 / (mu^2 t))``; exponential decay ``lr0 gamma^t`` has
``sum lr_t < inf``, so the iterate freezes once the steps vanish, at the noise level it had then.
Both start from the same lr0; the error is averaged over many seeds (vectorised).

    python examples/theory_one_over_t_vs_exponential.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distsched import schedules as S
from distsched.analysis import robbins_monro
from distsched.report import line_plot


def _sgd(sched, steps: int, seeds: int, dim: int, mu: float, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.full((seeds, dim), 5.0)
    err = np.empty(steps + 1)
    err[0] = np.mean(np.sum(x**2, axis=1))
    for t in range(steps):
        x -= sched(t) * (mu * x + sigma * rng.standard_normal(x.shape))
        err[t + 1] = np.mean(np.sum(x**2, axis=1))
    return err


def main(small: bool = False, out: str | None = None) -> dict:
    steps, seeds = (4000, 100) if small else (40000, 200)
    mu, sigma, dim, lr0 = 1.0, 1.0, 10, 0.5
    inv = S.inverse_time(lr=lr0, decay_rate=lr0 * mu)  # = 1 / (mu (t + 1/(lr0 mu)))
    exp = S.exponential(lr=lr0, gamma=0.995)
    curves = {"1/t": _sgd(inv, steps, seeds, dim, mu, sigma),
              "exponential 0.995^t": _sgd(exp, steps, seeds, dim, mu, sigma)}
    half, end = steps // 2, steps
    res = {
        "robbins_monro": {"1/t": robbins_monro(inv).satisfied, "exponential": robbins_monro(exp).satisfied},
        "error_half": {k: float(v[half]) for k, v in curves.items()},
        "error_end": {k: float(v[end]) for k, v in curves.items()},
        "theory_1_over_t_end": sigma**2 * dim / (mu**2 * (end + 1 / (lr0 * mu))),
    }
    print(f"Robbins-Monro: 1/t {res['robbins_monro']['1/t']}, exponential {res['robbins_monro']['exponential']}")
    for k in curves:
        print(f"  {k:22s} E|x - x*|^2 at t={half}: {res['error_half'][k]:.3e}, at t={end}: {res['error_end'][k]:.3e}")
    print(f"  theory for 1/t at t={end}: sigma^2 d / (mu^2 t) = {res['theory_1_over_t_end']:.3e}")
    path = Path(out or os.getcwd()) / "theory_one_over_t_vs_exponential.png"
    t = np.arange(steps + 1)
    keep = np.unique(np.geomspace(1, steps, 300).astype(int))
    line_plot(path, {k: (t[keep], v[keep]) for k, v in curves.items()}, logy=True,
              title=f"SGD on a noisy quadratic ({seeds} seeds)", xlabel="step", ylabel="E|x - x*|^2")
    res["plot"] = str(path)
    return res


if __name__ == "__main__":
    main()
