"""Per-step cost of ``ScheduledLR`` against torch's ``CosineAnnealingLR`` and ``OneCycleLR``.

An SGD optimizer with 10 param groups; each contender gets a fresh scheduler and ``--steps`` calls of
``scheduler.step()`` (``optimizer.step()`` is not timed), timed with ``time.perf_counter``. Contenders
are interleaved within each of ``--repeats`` rounds (so machine load hits all alike) and the median
per-step time is reported, with ours / torch as a ratio (target: <= 1.0).
OneCycleLR runs with ``cycle_momentum=False``: a learning-rate schedule only, like ours.

    python benchmarks/schedule_overhead.py [--groups 10] [--steps 2000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.optim import lr_scheduler as L

from distsched import schedules as S


def make_optimizer(groups: int) -> torch.optim.Optimizer:
    params = [{"params": [nn.Parameter(torch.zeros(4))]} for _ in range(groups)]
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def time_steps(make: Callable[[torch.optim.Optimizer], object], groups: int, steps: int) -> float:
    """Seconds per ``scheduler.step()`` over ``steps`` steps on a fresh optimizer and scheduler."""
    opt = make_optimizer(groups)
    sched = make(opt)
    opt.step()  # one real optimizer step first, as in training (keeps torch's order check quiet)
    step = sched.step
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def contenders(steps: int) -> dict[str, dict[str, Callable]]:
    total = steps + 1
    return {
        "cosine": {
            "torch": lambda o: L.CosineAnnealingLR(o, T_max=total, eta_min=1e-4),
            "ours": lambda o: S.ScheduledLR(o, S.Cosine(0.1, total_steps=total, min_lr=1e-4)),
        },
        "one_cycle": {
            "torch": lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=total, cycle_momentum=False),
            "ours": lambda o: S.ScheduledLR(o, S.OneCycle(0.1, total_steps=total)),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = contenders(args.steps)
    samples: dict[tuple[str, str], list[float]] = {(c, w): [] for c in cases for w in cases[c]}
    for _ in range(args.repeats):
        for case, pair in cases.items():
            for who, make in pair.items():
                samples[(case, who)].append(time_steps(make, args.groups, args.steps))
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {args.groups} param groups, "
        f"{args.steps} steps x {args.repeats} interleaved repeats, median per step"
    )
    for case in cases:
        ref = statistics.median(samples[(case, "torch")])
        ours = statistics.median(samples[(case, "ours")])
        print(
            f"{case:10s} torch {ref * 1e6:7.2f} us/step   ScheduledLR {ours * 1e6:7.2f} us/step   "
            f"ratio {ours / ref:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
