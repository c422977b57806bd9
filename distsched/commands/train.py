"""``distsched train CONFIG.yaml [--set KEY.PATH=VALUE ...] [--logger mlflow] [--address ADDR]
[--workers N | MIN:MAX] [--out DIR] [--resume RUN_DIR]``.

Launchers: ``ray`` (default: Ray Train's TorchTrainer on an embedded 127.0.0.1 cluster, or on
``--address``), ``torchrun`` (inside a torchrun process; chosen automatically when torchrun's
environment is present) and ``processes`` (N local processes, no Ray).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

LAUNCHERS = ("auto", "ray", "torchrun", "processes")
#: a torchrun rank other than 0 whose rank 0 refused the run (the CLI's exit code for a user's mistake)
EXIT_REFUSED = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="training config (YAML); not needed with --resume")
    parser.add_argument("--address", help="join this Ray cluster (HOST:PORT or 'auto') instead of starting one")
    parser.add_argument("--workers", metavar="N|MIN:MAX",
                        help="number of workers, or MIN:MAX for an elastic run on Ray (overrides the config's "
                             "'workers'; with --resume: resize the run)")
    parser.add_argument("--out", default="runs", help="parent of the new run folder (default ./runs)")
    parser.add_argument("--run-dir", help="use exactly this run folder (created if missing; refused if it holds a run)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="resume (or re-finish) the run in RUN_DIR")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="auto",
                        help="auto: torchrun inside a torchrun process, else ray")
    parser.add_argument("--token-file", help="the cluster's Ray auth token (default: RAY_AUTH_TOKEN, "
                        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray cluster (default: all usable)")
    parser.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (127.0.0.1)")
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts Ray Train may do")
    parser.add_argument("--no-progress", action="store_true", help="no live progress on the driver")
    parser.add_argument("--check", action="store_true",
                        help="a new run: run the driver's checks (config, data, model, one batch, privacy plan, "
                             "--run-dir free) and exit, nothing written (launch/torchrun.sh runs it before torchrun)")
    add_run_options(parser)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--set`` and ``--logger``, shared by ``train`` and ``simulate``."""
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key (VALUE read as YAML), e.g. --set schedule.lr=0.05; "
                             "recorded in the run's config.yaml")
    parser.add_argument("--logger", dest="loggers", action="append", default=[], choices=("tensorboard", "mlflow"),
                        help="also log to MLflow (TensorBoard event files are always written when installed)")


def overridden(config: str | None, sets: list[str], resume: str | None) -> dict | None:
    """The top-level keys that ``--set`` changes in the YAML at ``config`` (None without ``--set``)."""
    if not sets:
        return None
    if resume is not None or config is None:
        raise ValueError("--set changes a new run's config; a resumed run keeps its config.yaml")
    from distsched.config import apply_sets, load_yaml

    data = apply_sets(load_yaml(config), sets)
    named = {item.partition("=")[0].strip().split(".")[0] for item in sets}  # every key named, even when its
    return {k: v for k, v in data.items() if k in named}  # value equals the file's (true == 1: still checked)


def use_loggers(names: list[str]) -> None:
    """Name the extra loggers for the run's processes (``$DISTSCHED_LOGGERS``), checked now."""
    from distsched.report.loggers import ENV

    if "mlflow" in names:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ValueError("--logger mlflow needs mlflow: pip install mlflow (or mlflow-skinny)") from None
    if names:
        os.environ[ENV] = ",".join(dict.fromkeys(names))


#: what Ray's dashboard imports beyond ``ray[train]`` (they come with ``ray[default]``)
DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "opencensus", "prometheus_client")


def check_ray_dashboard() -> None:
    """Refuse ``--dashboard`` in one line, before anything starts, when ``ray[default]`` is missing."""
    import importlib.util

    missing = [m for m in DASHBOARD_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--dashboard needs Ray's dashboard packages: pip install 'ray[default]' "
                         f"(missing: {', '.join(missing)})")


def write_dashboard(run_dir: str | os.PathLike | None, quiet: bool = False) -> None:
    """``plots/dashboard.png`` of a finished run, and (unless ``quiet``) where it is."""
    if not run_dir or not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        return
    from distsched.report.dashboard import dashboard

    path = dashboard(run_dir)
    if not quiet:
        print(f"dashboard: {path}")


def _launcher(args: argparse.Namespace) -> str:
    if args.launcher != "auto":
        return args.launcher
    return "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ else "ray"


def _print_header(folder: Any, cfg: Any, launcher: str, total: int, start_step: int = 0) -> None:
    """The first lines of every launcher: the run folder, then name, workers, steps and launcher."""
    print(f"run folder: {folder.root}", flush=True)
    resumed = f", resuming after step {start_step}" if start_step else ""
    print(f"{cfg.name}: {_workers_text(cfg)}, {total} steps, launcher {launcher}{resumed}", flush=True)


def _workers_text(cfg: Any) -> str:
    return f"{cfg.elastic[0]} to {cfg.elastic[1]} workers (elastic)" if cfg.elastic else f"{cfg.workers} worker(s)"


def _print_summary(summary: dict) -> None:
    """The last line of every launcher (the run folder was printed first)."""
    parts = [f"steps {summary.get('steps_done')}/{summary.get('total_steps')}"]
    if isinstance(summary.get("final_loss"), float):
        parts.append(f"final loss {summary['final_loss']:.4f}")
    if isinstance(summary.get("test_accuracy"), float):
        parts.append(f"test accuracy {summary['test_accuracy']:.4f}")
    if isinstance(summary.get("test_bpb"), float):  # next-byte prediction
        parts.append(f"validation bits/byte {summary['test_bpb']:.4f}")
    parts += [
        f"sync rounds {summary.get('sync_rounds')}",
        f"bytes/worker {summary.get('bytes_sent')}",
        f"training {summary.get('wall_time_s')} s",
    ]
    if summary.get("epsilon") is not None:  # DP runs
        stop = ", stopped by the budget" if summary.get("stopped_by_budget") else ""
        parts.append(f"epsilon {summary['epsilon']:.4f} (delta {summary.get('delta')}{stop})")
        if summary.get("private") is False:
            parts.append("NOT PRIVATE (privacy.reproducible: true)")
    if summary.get("launch_wall_time_s") is not None:
        parts.append(f"with start-up {summary['launch_wall_time_s']} s")
    print("  ".join(parts), flush=True)
    if summary.get("resizes"):  # an elastic run
        print("resizes: " + ", ".join(f"step {r['step']} {r['old_workers']}->{r['new_workers']} ({r.get('cause')})"
                                      for r in summary["resizes"]), flush=True)


def _progress(folder: Any, cfg: Any, launcher: str, resumed: bool, no_progress: bool,
              total: int | None = None) -> Any:
    """Print the header and return the live progress (a context manager) read from ``metrics.jsonl``;
    ``total``: the run's steps when already known (from the preflight)."""
    from distsched.cluster.progress import Progress
    from distsched.cluster.trainer import _resume_step, planned_steps

    total = planned_steps(cfg) if total is None else total
    start = _resume_step(folder) if resumed else 0
    _print_header(folder, cfg, launcher, total, start)
    return Progress(folder.metrics_path, total, title=cfg.name, enabled=not no_progress, start_step=start)


def _workers_arg(text: str | None) -> int | tuple[int, int] | None:
    """``--workers N`` -> N; ``--workers MIN:MAX`` -> (MIN, MAX) (``N:N`` is N); a bad spec: ValueError."""
    if text is None:
        return None
    from distsched.train.config import parse_workers

    try:
        size, elastic = parse_workers(text)
    except ValueError:
        raise ValueError(f"--workers must be N or MIN:MAX with 1 <= MIN <= MAX, got {text!r}") from None
    return elastic if elastic is not None else size


def _refuse_elastic(cfg: Any, launcher: str) -> None:
    if cfg is not None and cfg.elastic is not None:
        lo, hi = cfg.elastic
        raise ValueError(f"workers [{lo}, {hi}]: an elastic run needs the Ray launcher, not {launcher}")


def run(args: argparse.Namespace) -> int:
    workers = _workers_arg(args.workers)
    if args.config is None and args.resume is None:
        raise ValueError("a CONFIG.yaml is required unless --resume RUN_DIR is given")
    overrides = _overrides(args, workers)
    use_loggers(args.loggers)
    if args.dashboard:
        check_ray_dashboard()
    launcher = _launcher(args)
    if launcher != "ray" and isinstance(workers, tuple):
        raise ValueError(f"--workers {args.workers}: an elastic run (MIN:MAX) needs the Ray launcher, "
                         f"not {launcher}")
    if args.check:
        return _check(args, launcher, overrides)
    if launcher == "torchrun":
        return _train_torchrun(args, overrides)
    folder, cfg, total = _prepare(args, launcher, overrides, workers)
    if launcher == "processes":
        from distsched.train.run import run_processes

        # the same header and live progress as the Ray launcher, read from the run's metrics.jsonl
        with _progress(folder, cfg, "processes", args.resume is not None, args.no_progress, total):
            summary = run_processes(cfg, folder, checked=True)
    else:
        summary = _train_ray(args, folder, cfg, total)
        if summary is None:
            return 1
    _print_summary(summary)
    write_dashboard(str(folder.root))
    return 0


def _overrides(args: argparse.Namespace, workers: int | tuple[int, int] | None) -> dict | None:
    """The config keys that ``--set`` and ``--workers`` change (None: none)."""
    overrides = overridden(args.config, args.sets, args.resume) or {}
    if workers is not None:
        overrides["workers"] = list(workers) if isinstance(workers, tuple) else workers
    return overrides or None


def _check(args: argparse.Namespace, launcher: str, overrides: dict | None) -> int:
    """``--check``: what :func:`_prepare` checks before a new run's folder exists, nothing created or written.
    torchrun's workers check on rank 0 inside the job, where a user's mistake ends in torchrun's traceback;
    this runs the checks first, on the launching host (one line, exit 2)."""
    from distsched.report import RunFolder
    from distsched.train.config import load_config
    from distsched.train.run import preflight

    if args.resume is not None or args.config is None:
        raise ValueError("--check checks a new run: CONFIG.yaml, without --resume")
    cfg = load_config(args.config, overrides)
    if launcher != "ray":
        _refuse_elastic(cfg, launcher)
    if args.run_dir is not None:
        RunFolder.check_fresh(args.run_dir)
    preflight(cfg)
    return 0


def _train_torchrun(args: argparse.Namespace, overrides: dict | None) -> int:
    """This process's part of a torchrun job; rank 0 shows the header, the progress and the summary."""
    from distsched.train.config import load_config
    from distsched.train.run import RefusedOnRankZero, run_torchrun

    cfg = load_config(args.config, overrides) if args.config else None
    _refuse_elastic(cfg, "torchrun")
    with contextlib.ExitStack() as stack:
        def on_start(folder: Any, run_cfg: Any, resumed: bool) -> None:  # rank 0, once the folder exists
            stack.enter_context(_progress(folder, run_cfg, "torchrun", resumed, args.no_progress))

        try:
            summary = run_torchrun(cfg, out=args.out, run_dir=args.run_dir, resume=args.resume, on_start=on_start)
        except RefusedOnRankZero:
            return EXIT_REFUSED  # rank 0 wrote the one line
    if summary:
        _print_summary(summary)
        write_dashboard(summary.get("run_dir"))
    return 0


def _prepare(args: argparse.Namespace, launcher: str, overrides: dict | None,
             workers: int | tuple[int, int] | None) -> tuple[Any, Any, int]:
    """The checked config, its run folder (new, or reopened with ``--resume``) and the run's total steps,
    for the ``ray`` and ``processes`` launchers: every check that can fail runs before the folder exists."""
    from distsched.train.config import load_config
    from distsched.train.run import preflight, prepare_run

    cfg = load_config(args.config, overrides) if args.config else None
    if launcher != "ray":
        _refuse_elastic(cfg, launcher)
    # the driver checks the config once (data, shards, model, one batch): a config the workers cannot
    # run fails now, before a folder or a cluster exists; a resumed run's config is read back first
    total = preflight(cfg) if cfg is not None and args.resume is None else None
    if launcher == "ray" and args.address:
        from distsched.cluster.local import check_reachable

        check_reachable(args.address)  # nothing answers: one line now, before a run folder exists
    folder, cfg = prepare_run(cfg, out=args.out, run_dir=args.run_dir, resume=args.resume, exclusive=True,
                              workers=workers if args.resume else None)  # a new size: resize on resume
    if launcher != "ray":
        _refuse_elastic(cfg, launcher)  # a resumed elastic run (its config.yaml is left as it was)
    if total is None:  # a resume: its newest checkpoint's model must fit the config's
        from distsched.train.checkpoint import latest_checkpoint

        total = preflight(cfg, latest_checkpoint(folder.checkpoints, warn=False))
    return folder, cfg, total


def _train_ray(args: argparse.Namespace, folder: Any, cfg: Any, total: int) -> dict | None:
    """The run on a Ray cluster (embedded, or joined at ``--address``): its summary, or None when training
    failed (the reason, and how to resume when that can help, are on stderr)."""
    from distsched.cluster.trainer import TrainingFailed, _resume_step, train_on_ray

    _print_header(folder, cfg, "ray", total, _resume_step(folder) if args.resume else 0)
    where = f"joining the Ray cluster at {args.address}" if args.address else "starting a local Ray cluster"
    print(f"{where} and {_workers_text(cfg)}...", flush=True)  # the wait before step 1 has a message
    try:
        return train_on_ray(
            cfg, folder, address=args.address, num_cpus=args.num_cpus, dashboard=args.dashboard,
            max_failures=args.max_failures, resume=args.resume is not None, progress=not args.no_progress,
            token_file=args.token_file, total_steps=total,
        )
    except KeyboardInterrupt:
        print(f"\nstopped; resume with: distsched train --resume {folder.root}", flush=True)
        raise
    except TrainingFailed as exc:
        hint = f"; resume with: distsched train --resume {folder.root}" if exc.retryable else ""
        sys.stderr.write(f"distsched train: training failed: {exc}{hint}\n")
        return None
