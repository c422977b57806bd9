"""``distsched schedule NAME --set KEY=VALUE ... --steps N [--plot FILE.png] [--csv FILE.csv]``."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="catalogue name, e.g. cosine")
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--list", action="store_true", help="list the catalogue and each schedule's parameters")
    parser.add_argument("--plot", metavar="FILE.png")
    parser.add_argument("--csv", metavar="FILE.csv")


def run(args: argparse.Namespace) -> int:
    from distsched import schedules as S

    if args.list:
        for name, cls in S.CATALOGUE.items():
            params = ", ".join(f"{k}: {v}" for k, v in cls.parameters().items())
            print(f"{name:24s} {params}")
        return 0
    if not args.name:
        raise ValueError("name is required (or use --list)")
    raise ValueError("not yet wired")  # replaced by the schedules work
