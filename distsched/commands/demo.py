"""``distsched demo``: the main job on the embedded local default."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default ./runs)")


def run(args: argparse.Namespace) -> int:
    raise ValueError("demo not yet wired")
