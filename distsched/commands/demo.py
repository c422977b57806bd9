"""``distsched demo``: the main job on the embedded local default.

It is ``distsched train examples/digits_qsr.yaml``: scikit-learn digits on 2 Ray Train workers
(embedded cluster on 127.0.0.1), local SGD whose sync period follows the cosine LR through QSR,
with live progress and a run folder (config, metrics, checkpoints, plots, summary) under ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = "digits_qsr.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs", help="parent folder of the run folder (default ./runs)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray cluster (default: all usable)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress")


def example_config() -> Path:
    """``examples/digits_qsr.yaml`` of the source tree (the package is installed editable)."""
    import distsched

    path = Path(distsched.__file__).resolve().parents[1] / "examples" / EXAMPLE
    if not path.exists():
        raise FileNotFoundError(f"demo config not found: {path} (run from a source checkout: pip install -e .)")
    return path


def run(args: argparse.Namespace) -> int:
    from distsched.commands import train

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    argv = [str(example_config()), "--out", args.out, "--launcher", "ray"]
    if args.num_cpus is not None:
        argv += ["--num-cpus", str(args.num_cpus)]
    if args.no_progress:
        argv.append("--no-progress")
    return train.run(parser.parse_args(argv))
