"""``distsched plan --target-epsilon E --delta D (--sample-rate Q | --batch-size B --dataset-size N)
(--epochs K | --steps T) [--noise-multiplier S] [--accountant rdp|prv] [--noise-schedule SPEC]
[--solve noise|steps|batch|epsilon] [--batch-scaling K1,K2,...] [--json] [--plot FILE.png]``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distsched.privacy import Plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-epsilon", type=float, help="the budget (leave out to solve for epsilon)")
    parser.add_argument("--delta", type=float, required=True, help="delta in (0, 1)")
    parser.add_argument("--sample-rate", type=float, help="Poisson sample rate q in (0, 1]")
    parser.add_argument("--batch-size", type=int, help="expected batch size B (with --dataset-size; q = B / N)")
    parser.add_argument("--dataset-size", type=int, help="number of training examples N")
    parser.add_argument("--epochs", type=float, help="passes over the data (steps = ceil(epochs / q))")
    parser.add_argument("--steps", type=int, help="number of DP-SGD steps")
    parser.add_argument("--noise-multiplier", "--sigma", dest="noise_multiplier", type=float,
                        help="noise multiplier (leave out to solve for it)")
    parser.add_argument("--accountant", default="rdp", choices=("rdp", "prv", "gdp"),
                        help="Opacus accountant (default rdp)")
    parser.add_argument("--noise-schedule", metavar="SPEC",
                        help="constant | step:gamma=G,step_size=K | exponential:ratio=R | linear:ratio=R | "
                             "piecewise:factors=a/b/c,boundaries=i/j  (level solved or set by --noise-multiplier)")
    parser.add_argument("--interval", type=int, help="steps each value of exponential/linear holds (default: 1 epoch)")
    parser.add_argument("--solve", choices=("noise", "steps", "batch", "epsilon"),
                        help="what to solve for (default: the one quantity left out)")
    parser.add_argument("--tol", type=float, default=1e-3, help="epsilon tolerance for the noise solve (default 1e-3)")
    parser.add_argument("--batch-scaling", metavar="K1,K2,...",
                        help="also list B' = k B with sigma' = k sigma at the same steps (same sigma C / B), with "
                             "epsilon for each k (needs --batch-size and --dataset-size, constant noise)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="FILE.png", help="plot epsilon over steps for the plan")


def run(args: argparse.Namespace) -> int:
    import json
    import warnings

    from distsched.privacy import plan

    if args.steps is not None and args.epochs is not None:
        raise ValueError(f"give one of --steps or --epochs, not both (got --steps {args.steps} --epochs {args.epochs})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus' "optimal order is the largest alpha" hints
        p = plan(
            target_epsilon=args.target_epsilon,
            delta=args.delta,
            sample_rate=args.sample_rate,
            batch_size=args.batch_size,
            dataset_size=args.dataset_size,
            steps=args.steps,
            epochs=args.epochs,
            noise_multiplier=args.noise_multiplier,
            noise_schedule=args.noise_schedule,
            accountant=args.accountant,
            solve=args.solve,
            tol=args.tol,
            interval=args.interval,
        )
        if args.plot:
            _plot(args.plot, p)
    result = p.to_dict()
    scaling = None
    if args.batch_scaling:
        scaling = _batch_scaling(p, args.batch_scaling, args.noise_schedule)
        result["batch_scaling"] = scaling
    if args.json:
        print(json.dumps(result))
        return 0
    _print_plan(p, args.plot, scaling)
    return 0


def _plot(path: str, p: Plan) -> None:
    """Epsilon spent over the plan's steps, and the target as a line, in ``path``."""
    from distsched.privacy import epsilon_curve
    from distsched.report import line_plot

    xs, ys = epsilon_curve(p.history(), p.delta, p.accountant, points=40 if p.accountant == "prv" else 200)
    series = {"epsilon spent": (xs, ys)}
    if p.target_epsilon is not None:
        series["target"] = ([0, p.steps], [p.target_epsilon, p.target_epsilon])
    line_plot(path, series, title=f"DP-SGD plan ({p.accountant}, delta={p.delta:g})", ylabel="epsilon")


def _batch_scaling(p: Plan, factors_text: str, noise_schedule: str | None) -> list[dict[str, Any]]:
    """``--batch-scaling K1,K2,...``: the plan at ``B' = k B``, ``sigma' = k sigma`` for each ``k``
    (:func:`~distsched.privacy.scale_batch_and_noise`)."""
    import warnings

    from distsched.privacy import scale_batch_and_noise

    if p.batch_size is None or p.dataset_size is None:
        raise ValueError("--batch-scaling needs --batch-size and --dataset-size (or --solve batch)")
    if type(p.noise_schedule).__name__ != "ConstantNoise":
        raise ValueError(f"--batch-scaling needs constant noise, got --noise-schedule {noise_schedule}")
    try:
        factors = tuple(float(k) for k in factors_text.split(","))
    except ValueError:
        raise ValueError(f"--batch-scaling must be numbers separated by commas, got {factors_text!r}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return scale_batch_and_noise(batch_size=p.batch_size, noise_multiplier=p.noise_multiplier,
                                     dataset_size=p.dataset_size, steps=p.steps, delta=p.delta,
                                     factors=factors, accountant=p.accountant)


def _print_plan(p: Plan, plot: str | None, scaling: list[dict[str, Any]] | None) -> None:
    """The plan as a two-column table, then the batch-noise scaling table if any."""
    rows = [
        ("solved for", p.solved),
        ("accountant", p.accountant),
        ("noise multiplier", f"{p.noise_multiplier:.6g}"),
        ("noise schedule", type(p.noise_schedule).__name__),
        ("sample rate", f"{p.sample_rate:.6g}"),
        ("batch size", "-" if p.batch_size is None else str(p.batch_size)),
        ("steps", str(p.steps)),
        ("epochs", f"{p.epochs:.4g}"),
        ("delta", f"{p.delta:g}"),
        ("target epsilon", "-" if p.target_epsilon is None else f"{p.target_epsilon:g}"),
        ("epsilon", f"{p.epsilon:.9g}"),
    ]
    for name, value in rows:
        print(f"{name:<18}{value}")
    if plot:
        print(f"{'plot':<18}{plot}")
    if scaling is not None:
        print("\nbatch-noise scaling at fixed steps (sigma C / B unchanged):")
        print(f"{'k':>6} {'batch size':>11} {'sigma':>10} {'sample rate':>12} {'epsilon':>12}")
        for r in scaling:
            print(f"{r['factor']:>6g} {r['batch_size']:>11d} {r['noise_multiplier']:>10.5g} "
                  f"{r['sample_rate']:>12.5g} {r['epsilon']:>12.6g}")
