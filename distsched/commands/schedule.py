"""``distsched schedule NAME --set KEY=VALUE ... --steps N [--plot FILE.png] [--csv FILE.csv]``.

Builds the schedule with :func:`distsched.schedules.from_spec` (so every config key works, including
``warmup_steps`` and nested specs such as ``--set 'schedules=[{name: constant, lr: 0.1}, ...]'``),
prints first, peak, last and minimum values and writes the curve. ``--list`` shows the catalogue.
"""

from __future__ import annotations

import argparse
from typing import Any

#: the most steps ``--steps`` evaluates (80 MB of values; a CSV of ~2 GB)
MAX_STEPS = 100_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="catalogue name, e.g. cosine (see --list)")
    parser.add_argument(
        "--set",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a schedule parameter; VALUE is read as YAML (0.1, [100, 200], {name: constant, lr: 0.1})",
    )
    parser.add_argument("--steps", type=int, default=1000, help="number of steps to evaluate (default 1000)")
    parser.add_argument("--list", action="store_true", help="list the catalogue and each schedule's parameters")
    parser.add_argument("--plot", metavar="FILE.png", help="write the curve as a PNG")
    parser.add_argument("--csv", metavar="FILE.csv", help="write step,value rows")
    parser.add_argument("--showcase", metavar="DIR", help="draw a few catalogue schedules into DIR/schedules.png")


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["lr=0.1", "milestones=[10, 20]"]`` -> ``{"lr": 0.1, "milestones": [10, 20]}`` (values read as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set must be KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"--set {key}: cannot read value {text!r} as YAML") from None
    return out


#: printed under ``--list``: the one warmup convention.
LIST_NOTE = (
    "total_steps is the whole run, warmup included (as HF and timm): --set warmup_steps=W on any schedule\n"
    "adds a warmup of W steps in front and the schedule takes the remaining total_steps - W steps, ending\n"
    "at its final value (min_lr) at step total_steps. Step counts without a total (step_size, milestones,\n"
    "cycle_steps, timescale) start after the warmup."
)


def _list(catalogue: dict) -> None:
    width = max(len(n) for n in catalogue)
    for name, cls in catalogue.items():
        params = ", ".join(f"{k}: {v}" for k, v in cls.parameters().items())
        print(f"{name:{width}s}  {params}")
    print()
    print(LIST_NOTE)


def showcase_schedules(steps: int) -> dict:
    """A few catalogue schedules, all with peak ``lr = 0.1`` over ``steps`` steps."""
    from distsched import schedules as S

    w = max(1, steps // 20)
    return {
        "warmup + cosine": S.warmup(S.cosine(lr=0.1, total_steps=steps, min_lr=1e-3), warmup_steps=w),
        "SGDR (T_mult=2, decay 0.7)": S.cosine_restarts(
            lr=0.1, cycle_steps=steps // 7 + 1, cycle_mult=2, cycle_decay=0.7
        ),
        "one-cycle": S.one_cycle(lr=0.1, total_steps=steps),
        "WSD (1-sqrt)": S.wsd(
            lr=0.1, total_steps=steps, warmup_steps=w, decay_steps=max(1, steps // 5), decay="1-sqrt"
        ),
        "triangular2": S.cyclic(lr=0.1, step_size_up=max(1, steps // 8), min_lr=0.01, mode="triangular2"),
        "inverse sqrt (+warmup)": S.warmup(S.inverse_sqrt(lr=0.1, timescale=w), warmup_steps=w),
    }


def showcase(folder: str, steps: int = 1000) -> str:
    """Write ``folder/schedules.png`` with :func:`showcase_schedules`; returns the path."""
    from pathlib import Path

    from distsched._checks import check_int
    from distsched.report.plots import line_plot

    steps = check_int("steps", steps, 20)
    series = {label: (range(steps), s.values(steps).tolist()) for label, s in showcase_schedules(steps).items()}
    path = line_plot(Path(folder) / "schedules.png", series, title="distsched schedules", ylabel="learning rate")
    return str(path)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distsched import schedules as S
    from distsched._checks import check_int

    if args.list:
        _list(S.CATALOGUE)
        return 0
    if args.showcase:
        print(f"schedule showcase: {showcase(args.showcase, args.steps)}")
        return 0
    if not args.name:
        raise ValueError("name is required (one of the catalogue, see --list)")
    steps = check_int("steps", args.steps, 1)
    if steps > MAX_STEPS:  # every value is held in memory (8 bytes a step) and written out
        raise ValueError(f"--steps must be at most {MAX_STEPS:_}, got {steps:_}")
    for flag, target in (("--csv", args.csv), ("--plot", args.plot)):
        if target and Path(target).is_dir():
            raise ValueError(f"{flag} must name a file, got the directory {target}")
    sched = S.from_spec({"name": args.name, **parse_params(args.params)})
    values = sched.values(steps)
    peak, low = int(values.argmax()), int(values.argmin())
    print(f"{sched!r}")
    print(
        f"{steps} steps: first {values[0]:.6g} | peak {values[peak]:.6g} at step {peak} | "
        f"last {values[-1]:.6g} | min {values[low]:.6g} at step {low}"
    )
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            f.write("step,value\n")
            for t, v in enumerate(values.tolist()):
                f.write(f"{t},{v!r}\n")
        print(f"wrote {path}")
    if args.plot:
        from distsched.report.plots import line_plot

        path = line_plot(
            args.plot, {args.name: (range(steps), values.tolist())}, title=args.name, ylabel="learning rate"
        )
        print(f"wrote {path}")
    return 0
