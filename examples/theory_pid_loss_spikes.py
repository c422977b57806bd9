"""A PID controller on the loss change reacts to loss spikes: the LR drops as soon as the loss rises
and returns to the schedule once the loss settles.

Least squares on digits (sklearn ``load_digits``, target = the digit) with minibatch SGD under a
cyclical schedule whose peaks exceed the stability limit ``2/lambda_max`` (measured by power
iteration on Hessian-vector products): without control each peak makes the loss blow up (spikes).
With ``Controlled(cyclic, PIDController(relative=True))`` the factor ``clip(1 - u_t, 0.05, 1)``
falls while the loss rises, which contains the spike. Same seeds, same batches for both runs.

    python examples/theory_pid_loss_spikes.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from distsched import schedules as S
from distsched.analysis import top_eigenvalue
from distsched.control import Controlled, PIDController
from distsched.report import line_plot


def _run(x, y, sched_base, steps, seed, controller):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = S.ScheduledLR(opt, Controlled(sched_base, controller) if controller else sched_base, multipliers=[1.0])
    losses, lrs = [], []
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if controller:
            controller.update(min(losses[-1], 1e300))
        sched.step()
    return np.asarray(losses), np.asarray(lrs)


def main(small: bool = False, out: str | None = None) -> dict:
    torch.set_num_threads(1)
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float64)
    y = torch.tensor(d.target, dtype=torch.float64).reshape(-1, 1)
    probe = torch.nn.Linear(64, 1).double()
    lam = top_eigenvalue(lambda: torch.nn.functional.mse_loss(probe(x), y), probe.parameters(), tol=1e-9).eigenvalue
    limit = 2.0 / lam
    steps, seeds = (400, 3) if small else (2000, 5)
    period = 100
    cyc = S.cyclic(lr=1.3 * limit, min_lr=0.1 * limit, step_size_up=period // 2)
    above = np.array([cyc(t) > limit for t in range(steps)])
    peak_loss, final, factor_high, factor_low = {"pid": [], "none": []}, {"pid": [], "none": []}, [], []
    curves = None
    for seed in range(seeds):
        ctl = PIDController(kp=3.0, ki=0.0, kd=1.0, min_factor=0.05, max_factor=1.0, smoothing=0.5, relative=True)
        lp, rp = _run(x, y, cyc, steps, seed, ctl)
        ln, rn = _run(x, y, cyc, steps, seed, None)
        warm = slice(period // 2, None)  # after the first ramp
        peak_loss["pid"].append(np.max(lp[warm]))
        peak_loss["none"].append(np.max(np.minimum(ln[warm], 1e300)))
        final["pid"].append(np.mean(lp[-20:]))
        final["none"].append(np.mean(np.minimum(ln[-20:], 1e300)))
        base = np.array([cyc(t) for t in range(steps)])
        f = rp / base
        factor_high.append(np.mean(f[above]))
        factor_low.append(np.mean(f[base < 0.5 * limit]))
        if curves is None:
            curves = (lp, rp, ln, base)
    res = {
        "lambda_max": lam,
        "stability_limit": limit,
        "peak_loss_median": {k: float(np.median(v)) for k, v in peak_loss.items()},
        "final_loss_median": {k: float(np.median(v)) for k, v in final.items()},
        "factor_mean_above_limit": float(np.mean(factor_high)),
        "factor_mean_low_lr": float(np.mean(factor_low)),
        "seeds": seeds,
    }
    print(f"lambda_max = {lam:.4f}, stability limit 2/lambda_max = {limit:.4f}; cyclic LR in "
          f"[{0.1 * limit:.4f}, {1.3 * limit:.4f}], above the limit {100 * above.mean():.0f}% of the steps")
    print(f"peak loss after the first ramp (median of {seeds} seeds): {res['peak_loss_median']}")
    print(f"final loss (median): {res['final_loss_median']}")
    print(f"PID factor: {res['factor_mean_above_limit']:.3f} on average where the schedule exceeds the limit, "
          f"{res['factor_mean_low_lr']:.3f} where it is below half of it")
    path = Path(out or os.getcwd()) / "theory_pid_loss_spikes.png"
    t = list(range(steps))
    lp, rp, ln, base = curves
    line_plot(path, {"loss, PID": (t, lp), "loss, no controller": (t, np.minimum(ln, 1e6)),
                     "lr / limit, PID": (t, rp / limit), "schedule / limit": (t, base / limit)},
              logy=True, title="PID on the loss change (seed 0)", xlabel="step", ylabel="loss, lr / (2/lambda_max)")
    res["plot"] = str(path)
    return res


if __name__ == "__main__":
    main()
