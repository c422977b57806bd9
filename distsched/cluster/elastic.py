"""An elastic Ray Train worker group: ``workers: [min, max]`` (``--workers MIN:MAX``).

The run trains in *segments*, each one fixed-size ``TorchTrainer.fit()`` of ``W`` workers,
``min <= W <= max``; between segments the group is resized through the worker loop's resize on resume
(:mod:`distsched.train.resize`: rank states averaged on load, data re-sharded, LR x the ``world_lr`` rule,
DP in group mode charged the new sample rate as a new accounting segment, the budget unchanged):

- **start**: ``W = min(max, free slots)``, a slot being one worker's resources (1 CPU, or 1 GPU on a
  cluster with GPUs) free in the cluster now; fewer than ``min``: wait up to ``wait_s``.
- **a worker lost** (its process or node died: Ray Train fails the segment, ``FailureConfig(max_failures=0)``):
  the slots are counted again once the dead group's resources are released, and the next segment starts
  at that size from the newest intact checkpoint (steps after it are redone). At most ``max_failures``
  such restarts; a worker that raised an error of its own is not retried (it would raise again).
- **capacity back** (polled every ``poll_s`` while a segment runs): the driver writes a stop file; every
  worker stops right after its next checkpoint (:class:`distsched.cluster.session.ResizeRequested`), and
  the next segment starts at the larger size from that very step (no step redone).

Each resize is a line of ``<run>/resizes.jsonl`` (step, old and new size) and of the summary's
``resizes``, with ``cause`` (``lost`` or ``grown``) and ``restart_s``: seconds from the end of the old
group (the driver saw it fail or stop) to the new group's rank 0 starting its loop.

Why not Ray Train's own elastic policy (``ScalingConfig(num_workers=(min, max))``, Ray 2.60): it sizes the
group from its AutoscalingCoordinator's view of the nodes' *total* resources, refreshed every 20 s
(``TICK_INTERVAL_S``), so on one node a lost worker always comes back at the old size whatever others
hold, and its resize kills the running group (the steps since the last checkpoint are lost). Tried on a
two-node loopback cluster (``ray.cluster_utils.Cluster``, token auth on), its first group started at 1 of 2
workers, and in a second try its resource requests to the coordinator timed out (``GetTimeoutError``, 5 s).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from distsched._checks import check_int, check_positive
from distsched.report import RunFolder
from distsched.train.config import TrainConfig
from distsched.train.loop import FaultInjection

#: the driver's request to stop the running group after its next checkpoint (holds the new size)
STOP_FILE = "elastic-stop"


def slots(available: dict[str, float], per_worker: dict[str, float]) -> int:
    """How many more workers of ``per_worker`` resources fit in ``available``:
    ``min_r floor(available[r] / per_worker[r])`` over the resources a worker needs."""
    need = {k: v for k, v in per_worker.items() if v > 0}
    if not need:
        raise ValueError(f"a worker needs some resource, got {per_worker}")
    return min(math.floor(available.get(k, 0.0) / v + 1e-9) for k, v in need.items())


def group_size(free: int, running: int, lo: int, hi: int) -> int | None:
    """The size for the next segment: ``min(hi, running + free)``, or None below ``lo``."""
    size = min(hi, running + free)
    return size if size >= lo else None


def settled_slots(count: Callable[[], int], stable_s: float = 1.0, interval_s: float = 0.25,
                  timeout_s: float = 10.0) -> int:
    """``count()`` once its readings, every ``interval_s``, held for ``stable_s`` (Ray releases a dead group's
    resources, and hands them to tasks waiting for them, asynchronously); the last reading after ``timeout_s``."""
    last, since = count(), time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= stable_s:
            break
    return last


class _GrowthWatch(threading.Thread):
    """While a segment of ``size`` workers runs, poll the free slots; when ``size + free`` exceeds ``size``
    (and ``size < hi``), write the stop file with the new size, once.

    Free slots count only once the group holds its own: after ``settle_s`` and after rank 0 logged a step
    of this segment (``metrics_path`` grew: every rank joined the process group, so its resources are
    placed). Before that, the slots the group is about to take read as free (a request to grow to the
    size it already has, then a restart at the same size after every checkpoint)."""

    def __init__(self, count: Callable[[], int], size: int, hi: int, stop_file: str, poll_s: float,
                 settle_s: float, metrics_path: str | os.PathLike | None = None) -> None:
        super().__init__(daemon=True, name="distsched-elastic-watch")
        self.count, self.size, self.hi, self.stop_file = count, size, hi, stop_file
        self.poll_s, self.settle_s = poll_s, settle_s
        self.metrics_path = metrics_path
        self.metrics_at_start = _size_of(metrics_path)
        self.halt = threading.Event()
        self.requested_at: float | None = None

    def run(self) -> None:
        if self.size >= self.hi or self.halt.wait(self.settle_s):  # the group's own placement first
            return
        while not self.halt.wait(self.poll_s):
            if self.metrics_path is not None and _size_of(self.metrics_path) <= self.metrics_at_start:
                # the group has not logged a step of this segment yet
                continue
            try:
                free = self.count()
            except Exception:  # noqa: BLE001 - the cluster is going away; the driver sees the segment end
                return
            if self.size < self.hi and free > 0:
                with open(self.stop_file, "w", encoding="utf-8") as f:
                    f.write(str(min(self.hi, self.size + free)))
                self.requested_at = time.time()
                return


def train_elastic(
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
    wait_s: float = 120.0,
    poll_s: float = 0.5,
    settle_s: float = 2.0,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the elastic config ``cfg`` (``cfg.elastic == (min, max)``) on Ray Train; returns the summary,
    with ``resizes`` (see the module docstring) and ``segments`` (the sizes the run trained at, in order).

    ``total_steps``: :func:`~distsched.cluster.trainer.planned_steps` of ``cfg`` when the caller has it.
    ``max_failures``: restarts after a lost worker (-1: no limit). ``wait_s``: how long to wait for ``min``
    free slots. ``poll_s``: how often a running segment looks for capacity, ``settle_s`` after it started.
    ``on_event(kind, info)``: called on the driver with ``("starting", {"workers": W})`` before a segment
    starts and ``("ended", {"workers": W, "cause": "lost" | "grown" | "finished"})`` after it ended, before
    the cluster is counted again (a place to log, or for a test to withdraw or return resources).
    """
    import dataclasses

    import ray

    from distsched.cluster.local import connect
    from distsched.cluster.progress import Progress
    from distsched.cluster.trainer import (
        POLL_INTERVAL_S,
        _resume_step,
        _set_aside_damaged_snapshot,
        finish_summary,
        planned_steps,
        read_resizes,
    )

    if cfg.elastic is None:
        raise ValueError("train_elastic needs workers: [min, max]")
    lo, hi = cfg.elastic
    check_int("max_failures", max_failures, -1)
    check_positive("wait_s", wait_s)
    check_positive("poll_s", poll_s)
    if total_steps is None:
        total_steps = planned_steps(cfg)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", POLL_INTERVAL_S)  # before the cluster starts
    connect(address, num_cpus=num_cpus, dashboard=dashboard, token_file=token_file)
    if resume:
        _set_aside_damaged_snapshot(folder)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= lo
    per_worker = {"CPU": 1.0, "GPU": 1.0} if use_gpu else {"CPU": 1.0}

    def free() -> int:
        return slots(ray.available_resources(), per_worker)

    stop_file = str(folder.root / STOP_FILE)
    started = time.perf_counter()
    segments: list[int] = []
    ends: list[tuple[str, float]] = []  # (why a segment ended: lost | grown, when), in order
    failures, resumed = 0, resume
    with Progress(folder.metrics_path, total_steps, title=cfg.name, enabled=progress,
                  start_step=_resume_step(folder) if resume else 0):
        while True:
            size = _wait_for(lambda: group_size(settled_slots(free), 0, lo, hi), wait_s, lo, hi)
            if os.path.exists(stop_file):
                os.remove(stop_file)
            if on_event is not None:
                on_event("starting", {"workers": size})
            outcome, lost = _run_segment(
                dataclasses.replace(cfg, workers=size), folder, _GrowthWatch(free, size, hi, stop_file, poll_s,
                                                                             settle_s, folder.metrics_path),
                resume=resumed, use_gpu=use_gpu, per_worker=per_worker, fault=fault,
                elastic={"stop_file": stop_file, "total_steps": total_steps},
                may_retry=max_failures < 0 or failures < max_failures)
            failures += lost
            segments.append(size)
            cause = "lost" if outcome == "lost" else "grown" if outcome == "stopped" else "finished"
            if on_event is not None:
                on_event("ended", {"workers": size, "cause": cause})
            ends.append((cause, time.time()))  # after the hook: restart_s is Ray's and the loop's time only
            resumed = True
            if outcome == "finished":
                break
            if outcome == "stopped" and not os.path.exists(stop_file):
                raise KeyboardInterrupt("training aborted before the end")  # no summary, no stop asked
    if os.path.exists(stop_file):
        os.remove(stop_file)
    resizes = _annotate(read_resizes(folder), ends)
    return finish_summary(folder, started, workers_range=[lo, hi], segments=segments, resizes=resizes,
                          lost_worker_restarts=failures)


def _run_segment(seg_cfg: TrainConfig, folder: RunFolder, watch: _GrowthWatch, *, resume: bool, use_gpu: bool,
                 per_worker: dict[str, float], fault: FaultInjection | None, elastic: dict[str, Any],
                 may_retry: bool) -> tuple[str, int]:
    """One fixed-size Ray Train group, watched for capacity: ``(outcome, 1 if a worker was lost else 0)``,
    outcome ``finished | stopped | lost``; a failure that is not retryable (or past ``max_failures``) raises."""
    from distsched.cluster.trainer import TrainingFailed, fit_group

    watch.start()
    try:
        return fit_group(seg_cfg, folder, resume=resume, use_gpu=use_gpu, per_worker=per_worker,
                         max_failures=0, fault=fault, elastic=elastic), 0
    except TrainingFailed as exc:
        if not exc.retryable or not may_retry:
            raise
        return "lost", 1
    finally:
        watch.halt.set()
        watch.join()


def _size_of(path: str | os.PathLike | None) -> int:
    """The file's size in bytes; 0 when absent or without a path."""
    if path is None:
        return 0
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _wait_for(size_now: Callable[[], int | None], wait_s: float, lo: int, hi: int) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        size = size_now()
        if size is not None:
            return size
        if time.monotonic() >= deadline:
            from distsched.cluster.trainer import TrainingFailed

            raise TrainingFailed(f"fewer than min {lo} worker(s) (workers [{lo}, {hi}]) fit in the cluster's free "
                                 f"resources after waiting {wait_s:.0f} s", retryable=True)
        time.sleep(0.5)


def _annotate(resizes: list[dict[str, Any]], ends: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Each resize with ``cause`` and ``restart_s``: the segment that wrote it started after the latest end
    before its own time stamp."""
    out = []
    for r in resizes:
        before = [end for end in ends if end[1] <= float(r["time"])]
        entry = {k: r[k] for k in ("step", "old_workers", "new_workers")}
        if before:
            cause, at = before[-1]
            entry.update(cause=cause, restart_s=round(float(r["time"]) - at, 3))
        else:  # a resize on resume (--resume RUN --workers N): the group before ran in another launch
            entry.update(cause="resume", restart_s=None)
        out.append(entry)
    return out
