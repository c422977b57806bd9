"""``distsched epsilon --sigma S --sample-rate Q --steps T --delta D [--accountant rdp|prv|gdp] [--json]``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sigma", "--noise-multiplier", dest="sigma", type=float, required=True,
                        help="noise multiplier (> 0)")
    parser.add_argument("--sample-rate", type=float, required=True, help="Poisson sample rate q in (0, 1]")
    parser.add_argument("--steps", type=int, required=True, help="number of DP-SGD steps (>= 1)")
    parser.add_argument("--delta", type=float, required=True, help="delta in (0, 1)")
    parser.add_argument("--accountant", default="rdp", choices=("rdp", "prv", "gdp"),
                        help="Opacus accountant (default rdp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import json
    import warnings

    from distsched._checks import check_int, check_range
    from distsched.privacy import epsilon
    from distsched.privacy.accounting import MAX_NOISE, MIN_NOISE, check_delta, check_sample_rate

    sigma = check_range("sigma", args.sigma, MIN_NOISE, MAX_NOISE)
    q = check_sample_rate(args.sample_rate)
    steps = check_int("steps", args.steps, 1)
    delta = check_delta(args.delta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus' "optimal order is the largest alpha" hints
        eps = epsilon([(sigma, q, steps)], delta, args.accountant)
    result = {
        "epsilon": eps,
        "delta": delta,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "accountant": args.accountant,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [
        ("accountant", args.accountant),
        ("noise multiplier", f"{sigma:g}"),
        ("sample rate", f"{q:g}"),
        ("steps", str(steps)),
        ("delta", f"{delta:g}"),
        ("epsilon", f"{eps:.9g}"),
    ]
    for name, value in rows:
        print(f"{name:<18}{value}")
    return 0
