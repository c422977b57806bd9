"""Discriminative (layer-wise) learning rates in fine-tuning reduce the drift of the early layers.

An MLP is pre-trained on digits 0-4 (sklearn's ``load_digits``) and fine-tuned on digits 5-9 with one
LR for all layers, or with ``lr_l = lr * alpha^(L - l)`` (ULMFiT's discriminative fine-tuning,
``distsched.schedules.layerwise``). Drift of layer l: ``|W_l - W_l^pre| / |W_l^pre|``. Also reported:
the accuracy on the new task and, with the old head, on the old task (what the early layers kept).

    python examples/theory_discriminative_finetune.py
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from distsched import schedules as S
from distsched.report import line_plot


def _data():
    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    return x, y


def _train(model, params, x, y, steps, lr, seed, multipliers=None):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = S.ScheduledLR(opt, S.cosine(lr=lr, total_steps=steps), multipliers)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main(small: bool = False, out: str | None = None) -> dict:
    torch.set_num_threads(1)
    seeds = 2 if small else 4
    pre_steps, ft_steps, lr, alpha = (100, 60, 0.05, 0.2) if small else (600, 400, 0.05, 0.2)
    x, y = _data()
    old, new = y < 5, y >= 5
    drift = {"uniform": [], "discriminative": []}
    acc_new = {"uniform": [], "discriminative": []}
    acc_old = {"uniform": [], "discriminative": []}
    for seed in range(seeds):
        torch.manual_seed(seed)
        pre = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                  torch.nn.Linear(64, 10))
        _train(pre, pre.parameters(), x[old], y[old], pre_steps, lr, seed)
        for mode in ("uniform", "discriminative"):
            model = copy.deepcopy(pre)
            if mode == "uniform":
                _train(model, model.parameters(), x[new], y[new], ft_steps, lr, 100 + seed)
            else:
                groups = S.layerwise(model, alpha=alpha)  # multipliers alpha^2, alpha, 1 (input -> output)
                _train(model, groups, x[new], y[new], ft_steps, lr, 100 + seed)
            layers = [i for i, m in enumerate(model) if isinstance(m, torch.nn.Linear)]
            with torch.no_grad():
                drift[mode].append([float((model[i].weight - pre[i].weight).norm() / pre[i].weight.norm())
                                    for i in layers])
            acc_new[mode].append(_acc(model, x[new], y[new]))
            mixed = copy.deepcopy(model)  # old head on the fine-tuned body: what the early layers kept
            mixed[4].load_state_dict(pre[4].state_dict())
            acc_old[mode].append(_acc(mixed, x[old], y[old]))
    d = {k: np.asarray(v) for k, v in drift.items()}
    res = {
        "drift_mean": {k: v.mean(0).tolist() for k, v in d.items()},
        "first_layer_drift_lower_every_seed": bool(np.all(d["discriminative"][:, 0] < d["uniform"][:, 0])),
        "acc_new": {k: float(np.mean(v)) for k, v in acc_new.items()},
        "acc_old_with_old_head": {k: float(np.mean(v)) for k, v in acc_old.items()},
        "seeds": seeds,
    }
    print(f"relative drift per layer (input -> output), mean over {seeds} seeds:")
    for k, v in res["drift_mean"].items():
        print(f"  {k:15s} " + "  ".join(f"{z:.4f}" for z in v))
    print(f"first-layer drift lower with discriminative LRs in every seed: {res['first_layer_drift_lower_every_seed']}")
    print(f"new-task accuracy: {res['acc_new']}")
    print(f"old-task accuracy with the old head on the fine-tuned body: {res['acc_old_with_old_head']}")
    path = Path(out or os.getcwd()) / "theory_discriminative_finetune.png"
    line_plot(path, {k: ([1, 2, 3], v) for k, v in res["drift_mean"].items()},
              title="drift of each layer in fine-tuning", xlabel="layer (input -> output)",
              ylabel="|W - W_pre| / |W_pre|")
    res["plot"] = str(path)
    return res


if __name__ == "__main__":
    main()
