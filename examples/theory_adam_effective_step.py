"""Adam under cosine annealing: the effective per-parameter step ``lr_t / (sqrt(v_hat) + eps)``.

Adam's update is ``lr_t * m_hat / (sqrt(v_hat) + eps)`` (Kingma & Ba 2015): the global LR is divided by
the root of each parameter's running mean of squared gradients. On a linear regression whose features
have very different scales (frequent/large vs rare/small gradients) the effective step of the
small-gradient directions stays orders of magnitude larger while the cosine schedule takes the global
LR down. ``v_hat`` is read from torch's Adam state and recomputed independently from the gradients.

    python examples/theory_adam_effective_step.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distsched import schedules as S
from distsched.report import line_plot


def main(small: bool = False, out: str | None = None) -> dict:
    torch.manual_seed(0)
    steps, n = (200, 256) if small else (2000, 1024)
    scales = torch.tensor([10.0, 10.0, 1.0, 1.0, 0.01, 0.01], dtype=torch.float64)  # feature scales
    x = torch.randn(n, len(scales), dtype=torch.float64) * scales
    y = x @ torch.ones(len(scales), 1, dtype=torch.float64) + 0.1 * torch.randn(n, 1, dtype=torch.float64)
    model = torch.nn.Linear(len(scales), 1, bias=False).double()
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=0.05, betas=(beta1, beta2), eps=eps)
    cos = S.cosine(lr=0.05, total_steps=steps, min_lr=0.0)
    sched = S.ScheduledLR(opt, cos)
    v_ref = torch.zeros(len(scales), dtype=torch.float64)
    eff, lrs, max_dev = [], [], 0.0
    for t in range(steps):
        idx = torch.randint(0, n, (32,))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        g = model.weight.grad.detach().reshape(-1)
        v_ref = beta2 * v_ref + (1 - beta2) * g**2  # independent recomputation of Adam's v
        opt.step()
        v_torch = opt.state[model.weight]["exp_avg_sq"].reshape(-1)
        max_dev = max(max_dev, float(((v_torch - v_ref).abs() / v_ref.clamp_min(1e-300)).max()))
        lr_t = opt.param_groups[0]["lr"]
        v_hat = v_ref / (1 - beta2 ** (t + 1))
        eff.append((lr_t / (v_hat.sqrt() + eps)).numpy())
        lrs.append(lr_t)
        sched.step()
    eff = np.asarray(eff)
    large, medium, small_g = eff[:, :2].mean(1), eff[:, 2:4].mean(1), eff[:, 4:].mean(1)
    groups = {"large gradients (scale 10)": large, "medium (scale 1)": medium, "small gradients (scale 0.01)": small_g}
    mid, late = steps // 2, int(0.95 * steps)
    res = {
        "max_rel_dev_v_torch_vs_recomputed": max_dev,
        "ratio_small_to_large": {"mid": float(small_g[mid] / large[mid]), "late": float(small_g[late] / large[late])},
        "effective_step_mid": {k: float(v[mid]) for k, v in groups.items()},
        "effective_step_late": {k: float(v[late]) for k, v in groups.items()},
        "lr_mid": lrs[mid],
        "lr_late": lrs[late],
        "ordered_every_step": bool(np.all(small_g > medium) and np.all(medium > large)),
    }
    print(f"torch's exp_avg_sq vs recomputed v: max relative deviation {max_dev:.2e}")
    for k, lr in ((mid, lrs[mid]), (late, lrs[late])):
        print(f"step {k} (global lr {lr:.2e}):")
        for g, v in groups.items():
            print(f"  effective step, {g:30s} {v[k]:.3e}")
    print(f"small/large effective-step ratio: mid {res['ratio_small_to_large']['mid']:.0f}, "
          f"late {res['ratio_small_to_large']['late']:.0f}; ordered at every step: {res['ordered_every_step']}")
    path = Path(out or os.getcwd()) / "theory_adam_effective_step.png"
    t = list(range(steps))
    series = {k: (t, v) for k, v in groups.items()}
    series["global lr"] = (t, np.asarray(lrs))
    line_plot(path, series, logy=True, title="Adam under cosine annealing: lr_t / (sqrt(v_hat) + eps)",
              xlabel="step", ylabel="effective step")
    res["plot"] = str(path)
    return res


if __name__ == "__main__":
    main()
