"""``distsched demo``: for now, a showcase of the schedule library (a PNG of a few schedules).

The training job replaces this once it lands.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default ./runs)")
    parser.add_argument("--steps", type=int, default=1000, help="steps to draw (default 1000)")


def showcase(steps: int) -> dict:
    """A few catalogue schedules, all with peak ``lr = 0.1`` over ``steps`` steps."""
    from distsched import schedules as S

    w = max(1, steps // 20)
    return {
        "warmup + cosine": S.warmup(S.cosine(lr=0.1, total_steps=steps - w, min_lr=1e-3), warmup_steps=w),
        "SGDR (T_0, T_mult=2, decay 0.7)": S.cosine_restarts(
            lr=0.1, cycle_steps=max(1, steps // 15), cycle_mult=2, cycle_decay=0.7
        ),
        "one-cycle": S.one_cycle(lr=0.1, total_steps=max(2, steps)),
        "WSD (1-sqrt)": S.wsd(
            lr=0.1, total_steps=steps, warmup_steps=w, decay_steps=max(1, steps // 5), decay="1-sqrt"
        ),
        "triangular2": S.cyclic(lr=0.1, step_size_up=max(1, steps // 8), min_lr=0.01, mode="triangular2"),
        "inverse sqrt (+warmup)": S.warmup(S.inverse_sqrt(lr=0.1, timescale=w), warmup_steps=w),
    }


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distsched._checks import check_int
    from distsched.report.plots import line_plot

    steps = check_int("steps", args.steps, 20)
    scheds = showcase(steps)
    series = {label: (range(steps), s.values(steps).tolist()) for label, s in scheds.items()}
    path = line_plot(
        Path(args.out) / "schedule-showcase" / "schedules.png",
        series,
        title="distsched schedules",
        ylabel="learning rate",
    )
    print(f"schedule showcase ({len(scheds)} schedules, {steps} steps): {path}")
    return 0
