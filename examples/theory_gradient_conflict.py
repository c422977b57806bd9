"""Gradient-conflict scaling on a two-task problem: the LR is reduced while the task gradients conflict.

Two tasks share ``w`` in R^d: ``L_k(w) = 1/2 |w - a_k|^2`` with noisy gradients (SGD). Far from the
optima both gradients point the same way (cosine > 0); between ``a_1`` and ``a_2`` they conflict
(cosine < 0), and there SGD only jitters around the compromise ``(a_1 + a_2)/2``.
``GradientConflictScaler(threshold=0, factor=0.1)`` lowers the LR exactly there. Compared with the
same constant LR (fast approach, high noise floor) and with a constant LR of ``0.1 x`` (low floor, slow
approach), over many seeds: the excess combined loss over time.

    python examples/theory_gradient_conflict.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distsched import schedules as S
from distsched.control import Controlled, GradientConflictScaler, task_gradients
from distsched.report import line_plot


def _run(lr_mode: str, steps: int, seed: int, dim: int, sigma: float, lr: float):
    g = torch.Generator().manual_seed(seed)
    a1 = torch.zeros(dim, dtype=torch.float64)
    a1[0] = 1.0
    a2 = -a1
    w = torch.full((dim,), 20.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.0)
    ctl = GradientConflictScaler(threshold=0.0, factor=0.1, smoothing=0.9)
    sched = {"conflict-scaled": Controlled(S.constant(lr), ctl), "constant": S.constant(lr),
             "constant x 0.1": S.constant(0.1 * lr)}[lr_mode]
    lrs = S.ScheduledLR(opt, sched, multipliers=[1.0])  # the schedule sets the LR itself
    excess, factors = [], []
    opt_value = 0.5 * float((a1 - a2).norm() ** 2) / 2  # combined loss at the compromise (a1 + a2) / 2
    for _ in range(steps):
        noise = [sigma * torch.randn(dim, generator=g, dtype=torch.float64) for _ in range(2)]
        losses = [0.5 * ((w - a) ** 2).sum() + (n * w).sum() for a, n in zip((a1, a2), noise)]
        grads = task_gradients(losses, [w])
        ctl.update(grads)
        opt.zero_grad()
        w.grad = grads[0] + grads[1]
        opt.step()
        lrs.step()
        with torch.no_grad():
            excess.append(float(0.5 * ((w - a1) ** 2).sum() + 0.5 * ((w - a2) ** 2).sum()) - opt_value)
        factors.append(ctl.factor)
    return np.asarray(excess), np.asarray(factors)


def main(small: bool = False, out: str | None = None) -> dict:
    torch.set_num_threads(1)
    steps, seeds = (200, 5) if small else (600, 12)
    dim, sigma, lr = 10, 0.5, 0.2
    modes = ("conflict-scaled", "constant", "constant x 0.1")
    curves = {m: np.mean([_run(m, steps, s, dim, sigma, lr)[0] for s in range(seeds)], axis=0) for m in modes}
    _, factors = _run("conflict-scaled", steps, 0, dim, sigma, lr)
    tail = slice(int(0.8 * steps), None)
    floor = {m: float(np.mean(c[tail])) for m, c in curves.items()}
    target = 2.0 * floor["constant"]  # "arrived": within 2x of the fast run's noise floor
    reach = {m: int(np.argmax(c < target)) if np.any(c < target) else None for m, c in curves.items()}
    first_conflict = int(np.argmax(factors < 1.0)) if np.any(factors < 1.0) else None
    res = {
        "final_excess_loss": floor,
        "steps_to_reach_2x_constant_floor": reach,
        "first_conflict_step_seed0": first_conflict,
        "fraction_reduced_after_arrival_seed0": float(np.mean(factors[reach["constant"] or 0 :] < 1.0)),
        "seeds": seeds,
    }
    print(f"mean over {seeds} seeds; excess combined loss over the last 20% of {steps} steps:")
    for m in modes:
        print(f"  {m:16s} {floor[m]:.4f}   steps to reach {target:.3f}: {reach[m]}")
    print(f"seed 0: first conflict (factor < 1) at step {first_conflict}; LR reduced on "
          f"{100 * res['fraction_reduced_after_arrival_seed0']:.0f}% of the steps after arrival")
    path = Path(out or os.getcwd()) / "theory_gradient_conflict.png"
    t = list(range(steps))
    line_plot(path, {m: (t, np.maximum(c, 1e-6)) for m, c in curves.items()}, logy=True,
              title=f"two tasks, shared weights ({seeds} seeds)", xlabel="step", ylabel="excess combined loss")
    res["plot"] = str(path)
    return res


if __name__ == "__main__":
    main()
