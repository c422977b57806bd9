"""``distsched simulate CONFIG.yaml [--address ADDR] [--out DIR] [--resume RUN_DIR] [--rounds N]``:
federated simulation on a pool of Ray actors; writes a run folder and prints the summary."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see examples/fed_digits.yaml)")
    parser.add_argument("--address", help="join this Ray cluster (default: embedded cluster on 127.0.0.1)")
    parser.add_argument("--out", help="parent folder of the run folder (default: the config's output_dir)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run folder from its latest checkpoint")
    parser.add_argument("--rounds", type=int, help="override the config's rounds")
    parser.add_argument("--num-actors", type=int, help="override the config's num_actors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import json

    from distsched.federated import simulate

    overrides = {}
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.num_actors is not None:
        overrides["num_actors"] = args.num_actors
    summary = simulate(
        args.config,
        out_dir=args.out,
        resume=args.resume,
        address=args.address,
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
    print(json.dumps({k: summary[k] for k in keep}, indent=2))
    return 0
