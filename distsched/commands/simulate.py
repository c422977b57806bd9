"""``distsched simulate CONFIG.yaml [--set KEY.PATH=VALUE ...] [--logger mlflow] [--address ADDR] [--out DIR]
[--resume RUN_DIR] [--rounds N] [--json]``: federated simulation on a pool of Ray actors; writes a run folder
(with ``plots/dashboard.png``) and prints a one-line summary."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from distsched.commands.train import add_run_options

    parser.add_argument("config", nargs="?", help="YAML config (see examples/fed_digits.yaml); with --resume, "
                        "optional (the run's own config.yaml; only rounds and num_actors may differ)")
    parser.add_argument("--address", help="join this Ray cluster (default: embedded cluster on 127.0.0.1)")
    parser.add_argument("--out", help="parent folder of the run folder (default: the config's output_dir)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run folder from its latest checkpoint")
    parser.add_argument("--rounds", type=int, help="override the config's rounds")
    parser.add_argument("--num-actors", type=int, help="override the config's num_actors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of one line")
    add_run_options(parser)


def summary_line(summary: dict[str, Any]) -> str:
    """``rounds 30 (completed)  final test accuracy 0.9091  client updates 600  ...`` from the summary."""
    parts = [f"rounds {summary.get('rounds')} ({summary.get('stop_reason')})"]
    if isinstance(summary.get("final_test_acc"), float):
        parts.append(f"final test accuracy {summary['final_test_acc']:.4f}")
    if isinstance(summary.get("final_test_bpb"), float):
        parts.append(f"validation bits/byte {summary['final_test_bpb']:.4f}")
    if summary.get("epsilon") is not None:
        parts.append(f"epsilon {summary['epsilon']:.4f}")
    parts.append(f"client updates {summary.get('client_updates')}")
    if isinstance(summary.get("steady_updates_per_s"), (int, float)):
        parts.append(f"{summary['steady_updates_per_s']:.1f} updates/s")
    if isinstance(summary.get("end_to_end_s"), (int, float)):
        parts.append(f"end to end {summary['end_to_end_s']:.1f} s")
    if summary.get("actor_failures"):
        parts.append(f"actor failures {summary['actor_failures']}")
    return "  ".join(parts)


def run(args: argparse.Namespace) -> int:
    import json

    from distsched.cluster import ray_executor
    from distsched.commands.train import overridden, use_loggers, write_dashboard
    from distsched.config import load_yaml
    from distsched.federated import simulate

    if args.config is None and args.resume is None:
        raise ValueError("a CONFIG.yaml is required unless --resume RUN_DIR is given")
    sets = overridden(args.config, args.sets, args.resume) or {}
    overrides: dict[str, Any] = {}
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.num_actors is not None:
        overrides["num_actors"] = args.num_actors
    use_loggers(args.loggers)
    config = {**load_yaml(args.config), **sets} if sets else args.config
    summary = simulate(
        config,
        out_dir=args.out,
        resume=args.resume,
        executor=ray_executor(args.address),
        progress=not args.no_progress,
        **overrides,
    )
    keep = (
        "rounds",
        "stop_reason",
        "final_test_acc",
        "epsilon",
        "client_updates",
        "end_to_end_s",
        "steady_updates_per_s",
        "actor_failures",
        "partition",
        "run_dir",
    )
    if summary.get("final_test_bpb") is not None:  # next-byte prediction: validation bits per byte
        keep = (*keep[:3], "final_test_bpb", *keep[3:])
    if args.json:
        print(json.dumps({k: summary.get(k) for k in keep}, indent=2))
    else:
        print(summary_line(summary))
        print(f"run folder: {summary.get('run_dir')}")
    write_dashboard(summary.get("run_dir"), quiet=args.json)  # --json: stdout is the JSON alone
    return 0
