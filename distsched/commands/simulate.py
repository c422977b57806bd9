"""``distsched simulate CONFIG.yaml [--set KEY.PATH=VALUE ...] [--logger mlflow] [--address ADDR] [--out DIR]
[--resume RUN_DIR] [--rounds N] [--executor local|ray|auto] [--json]``: federated simulation in this process or
on a pool of Ray actors; writes a run folder (with ``plots/dashboard.png``) and prints a one-line summary.

``--executor auto`` (the default) runs in this process, without starting Ray, when the run is small
(at most :data:`AUTO_LOCAL_UPDATES` client updates, ``rounds * expected cohort``) and no ``--address``
is given; otherwise on Ray. Both executors give the same results bit for bit."""

from __future__ import annotations

import argparse
from typing import Any

#: ``--executor auto`` stays in this process up to this many client updates (rounds x expected cohort):
#: Ray's start-up (seconds) is then most of a run
AUTO_LOCAL_UPDATES = 5_000


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
    parser.add_argument("--executor", choices=("local", "ray", "auto"), default="auto",
                        help="local: this process, no Ray; ray: a Ray actor pool; auto (default): local for "
                        f"small runs (<= {AUTO_LOCAL_UPDATES} client updates) without --address, else ray")
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


def choose_executor(choice: str, address: str | None, cfg: Any) -> str:
    """``local`` or ``ray`` for ``--executor choice`` and the run's config ``cfg`` (a ``FedConfig``)."""
    if choice == "local" and address is not None:
        raise ValueError("--address joins a Ray cluster: use --executor ray (or auto)")
    if choice != "auto":
        return choice
    if address is not None:
        return "ray"
    s = cfg.sampling
    cohort = s.cohort_size if s.cohort_size is not None else s.fraction * cfg.partition.num_clients
    return "local" if cfg.rounds * cohort <= AUTO_LOCAL_UPDATES else "ray"


def run(args: argparse.Namespace) -> int:
    import json

    from distsched.cluster import ray_executor
    from distsched.commands.train import overridden, use_loggers, write_dashboard
    from distsched.config import load_yaml
    from distsched.federated import simulate
    from distsched.federated.config import fed_config
    from distsched.federated.resume import resume_config

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
    if args.resume is not None:
        cfg = resume_config(args.resume, load_yaml(config) if isinstance(config, str) else config, overrides)
    else:
        cfg = fed_config({**(load_yaml(config) if isinstance(config, str) else dict(config)), **overrides})
    kind = choose_executor(args.executor, args.address, cfg)
    summary = simulate(
        config,
        out_dir=args.out,
        resume=args.resume,
        executor=ray_executor(args.address) if kind == "ray" else None,
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
