"""``distsched demo``: for now, a showcase of the schedule library (a PNG of a few schedules).

The training job replaces this once it lands.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default ./runs)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distsched.commands.schedule import showcase

    path = showcase(str(Path(args.out) / "schedule-showcase"))
    print(f"schedule showcase written to {path}")
    return 0
