"""Run the worker loop on N workers with Ray Train's ``TorchTrainer``.

Ray Train builds the process group (gloo on CPU, NCCL on GPU), places the workers, and restarts the
whole worker group when one dies (``FailureConfig(max_failures)``); the loop then resumes from the
latest checkpoint that every worker reported. Checkpoints and Ray's own bookkeeping live in
``<run>/checkpoints`` (``RunConfig(storage_path=<run>, name="checkpoints")``), so training the same
run folder again (``--resume``) picks up where it stopped.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from typing import Any

from distsched._checks import check_int
from distsched.report import RunFolder
from distsched.train.config import TrainConfig, config_from_mapping, config_to_mapping
from distsched.train.loop import FaultInjection

#: Ray Train's controller polls its workers this often (s); a report waits for that poll, so
#: Ray's default (2 s) would make every checkpoint cost up to 2 s.
POLL_INTERVAL_S = "0.2"
#: Ray Train's index of the checkpoints it reported, in ``<run>/checkpoints``
SNAPSHOT = "checkpoint_manager_snapshot.json"


def _ray_worker(config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    from distsched.cluster.session import RaySession, ResizeRequested
    from distsched.train.loop import train_worker

    cfg = config_from_mapping(config["config"])
    root = RunFolder.open(config["run_dir"])
    elastic = config.get("elastic") or {}
    session = RaySession(root.checkpoints, resume=config["resume"], newest=bool(elastic),
                         stop_file=elastic.get("stop_file"), total_steps=elastic.get("total_steps"))
    logs = root.root / "logs"
    marker = logs / f"failed-{config['launch']}"
    if marker.exists():  # a worker of this launch raised: a retry would raise the same; do not train again
        raise WorkerFailed(marker.read_text(encoding="utf-8"))
    fault = FaultInjection(**config["fault"]) if config.get("fault") else None
    try:
        if session.rank == 0:
            record_resize(root, session.restore_dir(), session.world_size, config["launch"])
        train_worker(cfg, root.root, session, fault=fault)
    except ResizeRequested:
        return  # the checkpoint is reported: the driver restarts the group at its new size
    except Exception as exc:
        import traceback

        logs.mkdir(exist_ok=True)
        log = logs / f"worker_{session.rank}.log"
        log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        if not _lost_peer(exc):  # a lost peer is what Ray's restarts are for; anything else would repeat
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            marker.write_text(f"worker {session.rank}: {type(exc).__name__}: {first} (full log: {log})",
                              encoding="utf-8")
        raise


#: the run's resize history, one JSON line per resize: ``{"step", "old_workers", "new_workers", "launch", "time"}``
RESIZES = "resizes.jsonl"


def record_resize(folder: RunFolder, restore: Any, world: int, launch: str) -> None:
    """Rank 0 of a starting group: when ``restore`` (the checkpoint it resumes from) was saved by another number
    of workers, append the resize to ``<run>/resizes.jsonl``. Entries at or after the restored step are
    dropped first: the run rolled back past them, so they are not in the history of its final model."""
    import json

    from distsched.train.checkpoint import read_meta

    if restore is None:
        return
    meta = read_meta(restore)
    step, old = int(meta["step"]), int(meta.get("world_size", 1))
    path = folder.root / RESIZES
    kept = [e for e in read_resizes(folder) if int(e["step"]) < step]
    if old != world:
        kept.append({"step": step, "old_workers": old, "new_workers": world, "launch": launch,
                     "time": time.time()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in kept), encoding="utf-8")
    tmp.replace(path)


def read_resizes(folder: RunFolder) -> list[dict[str, Any]]:
    """The run's resizes (``resizes.jsonl``), oldest first."""
    import json

    path = folder.root / RESIZES
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


#: messages of collective failures caused by another worker's death (gloo, NCCL, the TCPStore)
_PEER_LOST = re.compile(r"gloo|nccl|connection (reset|closed|refused)|broken pipe|timed? ?out|socket", re.I)


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a communication failure (another worker died), not an error of this one."""
    import torch.distributed as dist

    return isinstance(exc, (dist.DistError, ConnectionError, TimeoutError)) or (
        isinstance(exc, RuntimeError) and bool(_PEER_LOST.search(str(exc)))
    )


class WorkerFailed(RuntimeError):
    """A training worker raised (the message: which worker, the exception in one line, its log).

    Raised by every worker of a restarted group once a worker of the same launch raised an error of
    its own (not a lost peer): the same code on the same checkpoint would raise it again."""


class TrainingFailed(RuntimeError):
    """Ray Train gave up: ``message`` is one line; ``retryable`` says whether resuming may help (a
    worker process died) or not (a worker raised, and would raise again)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _translate(exc: Exception, folder: RunFolder, launch: str) -> TrainingFailed:
    marker = folder.root / "logs" / f"failed-{launch}"
    if marker.exists():
        return TrainingFailed(marker.read_text(encoding="utf-8").strip(), retryable=False)
    text = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    last = text[-1].strip() if text else type(exc).__name__
    return TrainingFailed(f"{last} (Ray's logs: {_session_logs()})", retryable=True)


def _session_logs() -> str:
    try:
        import ray

        return f"{ray._private.worker._global_node.get_session_dir_path()}/logs"
    except Exception:  # noqa: BLE001 - only a hint
        return "/tmp/ray/session_latest/logs"


def _resume_step(folder: RunFolder) -> int:
    """Step of the newest complete checkpoint on disk (0 if none): progress shows what comes after."""
    from distsched.train.checkpoint import latest_checkpoint, read_meta

    found = latest_checkpoint(folder.checkpoints, warn=False)
    return int(read_meta(found)["step"]) if found else 0


def _set_aside_damaged_snapshot(folder: RunFolder) -> None:
    """Ray Train resumes from its ``checkpoint_manager_snapshot.json``; an unreadable one would fail
    every restart. It is renamed ``*.damaged`` (one-line warning) and the run resumes from the newest
    intact checkpoint on disk instead."""
    import json

    path = folder.checkpoints / SNAPSHOT
    if not path.exists():
        return
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        path.replace(path.with_name(path.name + ".damaged"))
        sys.stderr.write(f"distsched: warning: Ray's checkpoint index {path} is damaged; resuming from the "
                         "newest intact checkpoint on disk\n")


def planned_steps(cfg: TrainConfig) -> int:
    """Total steps of ``cfg``, after checking on the driver that its data, shards and model build
    (a bad config fails here with one line, not in every worker and every restart)."""
    from distsched.train.run import preflight

    return preflight(cfg)


def train_on_ray(
    cfg: TrainConfig,
    folder: RunFolder,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    max_failures: int = 3,
    resume: bool = False,
    progress: bool = True,
    fault: FaultInjection | None = None,
    token_file: str | os.PathLike | None = None,
    total_steps: int | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` on ``cfg.workers`` Ray Train workers; returns the run's ``summary.json``.

    ``address=None`` starts an embedded cluster on 127.0.0.1 (``num_cpus`` CPUs, default: those this
    process may use) unless Ray is already initialized; ``address`` joins an existing cluster.
    ``total_steps``: :func:`planned_steps` of ``cfg`` when the caller has computed it (the driver's
    check of the config is then not run again).
    An elastic config (``workers: [min, max]``) runs through :func:`distsched.cluster.elastic.train_elastic`.
    """
    import ray

    from distsched.cluster.local import connect
    from distsched.cluster.progress import Progress

    if cfg.elastic is not None:
        from distsched.cluster.elastic import train_elastic

        return train_elastic(cfg, folder, address=address, num_cpus=num_cpus, dashboard=dashboard,
                             max_failures=max_failures, resume=resume, progress=progress, fault=fault,
                             token_file=token_file, total_steps=total_steps)
    check_int("max_failures", max_failures, -1)
    if total_steps is None:
        total_steps = planned_steps(cfg)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", POLL_INTERVAL_S)  # before the cluster starts
    connect(address, num_cpus=num_cpus, dashboard=dashboard, token_file=token_file)
    if resume:
        _set_aside_damaged_snapshot(folder)

    resources = ray.cluster_resources()
    use_gpu = resources.get("GPU", 0) >= cfg.workers
    # one CPU per worker, or an equal share of the CPUs free now (a small cluster, or CPUs held by others)
    free = ray.available_resources().get("CPU", 0.0)
    cpus = free if free > 0 else resources.get("CPU", 1.0)
    per_worker = {"CPU": max(0.01, min(1.0, math.floor(100 * cpus / cfg.workers) / 100))}
    started = time.perf_counter()
    with Progress(folder.metrics_path, total_steps, title=cfg.name, enabled=progress,
                  start_step=_resume_step(folder) if resume else 0):
        outcome = fit_group(cfg, folder, resume=resume, use_gpu=use_gpu, per_worker=per_worker,
                            max_failures=max_failures, fault=fault)
    if outcome != "finished":
        raise KeyboardInterrupt("training aborted before the end")  # an aborted run writes no summary
    return finish_summary(folder, started)


def fit_group(
    cfg: TrainConfig,
    folder: RunFolder,
    *,
    resume: bool,
    use_gpu: bool,
    per_worker: dict[str, float],
    max_failures: int,
    fault: FaultInjection | None = None,
    elastic: dict[str, Any] | None = None,
) -> str:
    """One ``TorchTrainer.fit()`` of ``cfg.workers`` workers: ``"finished"`` (a new summary was written) or
    ``"stopped"`` (the workers returned without finishing: an elastic stop). Raises :class:`TrainingFailed`
    when Ray Train gives up, KeyboardInterrupt on Ctrl-C.

    ``elastic``: ``{"stop_file", "total_steps"}`` for the session of an elastic run (see
    :mod:`distsched.cluster.session`)."""
    import dataclasses

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from distsched.cluster.rendezvous import BoundTorchConfig

    launch = f"{os.getpid()}-{time.time_ns()}"
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", POLL_INTERVAL_S)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={
            "config": config_to_mapping(cfg),
            "run_dir": str(folder.root),
            "resume": resume,
            "fault": dataclasses.asdict(fault) if fault else None,
            "launch": launch,
            "elastic": elastic,
        },
        torch_config=BoundTorchConfig(),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=folder.checkpoints.name,
            storage_path=str(folder.root),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
        ),
    )
    before = folder.summary_path.stat().st_mtime_ns if folder.summary_path.exists() else None
    try:
        trainer.fit()
    except SystemExit as exc:  # Ray Train's Ctrl-C handler aborts the run, then calls sys.exit
        raise KeyboardInterrupt("training aborted") from exc
    except TrainingFailedError as exc:
        raise _translate(exc, folder, launch) from None
    if not folder.summary_path.exists() or folder.summary_path.stat().st_mtime_ns == before:
        return "stopped"
    return "finished"


def finish_summary(folder: RunFolder, started: float, **extra: Any) -> dict[str, Any]:
    """The run's ``summary.json`` with ``launch_wall_time_s`` (the whole launch: cluster, workers, restarts;
    ``wall_time_s`` is the training loop) and ``extra``, written back and returned."""
    import json

    summary = json.loads(folder.summary_path.read_text(encoding="utf-8"))
    summary["launch_wall_time_s"] = round(time.perf_counter() - started, 3)
    summary.update(extra)
    folder.write_summary(summary)
    return summary
