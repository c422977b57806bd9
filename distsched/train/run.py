"""Entry points without Ray: the run folder, a torchrun worker, and N local processes.

* :func:`prepare_run` makes (or reopens) the run folder and writes ``config.yaml``.
* :func:`run_torchrun` is what each torchrun process runs (``env://`` rendezvous, MASTER_ADDR
  defaults to 127.0.0.1, joined by :func:`distsched.sync.init_process_group`).
* :func:`run_processes` starts ``workers`` local processes joined by a gloo/NCCL group on
  ``tcp://127.0.0.1:<free port>`` (used by tests and ``--launcher processes``); nothing listens
  beyond loopback.

The Ray Train entry is :func:`distsched.cluster.train_on_ray`; all three run
:func:`distsched.train.loop.train_worker`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distsched.report import RunFolder
from distsched.train.checkpoint import latest_checkpoint
from distsched.train.config import TrainConfig, config_from_mapping, config_to_mapping
from distsched.train.loop import FaultInjection, train_worker
from distsched.train.resize import check_resizable
from distsched.train.session import LocalSession
from distsched.train.state import check_resumable

DEFAULT_OUT = "runs"
#: the most steps a run may plan: at a millisecond a step, 10^9 steps are 11 days of training
MAX_STEPS = 10**9


def prepare_run(
    cfg: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    exclusive: bool = False,
    workers: int | tuple[int, int] | None = None,
) -> tuple[RunFolder, TrainConfig]:
    """The run folder and its config.

    ``resume``: an existing run folder, its ``config.yaml`` is read back (``cfg`` may set only the
    same number of workers). ``workers`` with ``resume``: resize on resume (:mod:`distsched.train.resize`),
    or a ``(min, max)`` range (an elastic run, :mod:`distsched.cluster.elastic`); ``config.yaml`` then records
    the new size. Otherwise ``run_dir`` (an exact folder; with ``exclusive``, as the CLI
    does, refused when it already holds a run) or a new
    ``<out>/<name>-<timestamp>`` folder, with ``cfg`` written to ``config.yaml``.
    """
    if resume is not None:
        folder = RunFolder(Path(resume).resolve())
        if exclusive and folder.root.is_dir():
            folder.claim()  # one process at a time continues a run (another --resume of it: one line)
        saved = config_from_mapping(folder.read_config())
        if cfg is not None and cfg.workers != saved.workers:
            raise ValueError(f"workers must be {saved.workers} to resume {folder.root}, got {cfg.workers}")
        latest = latest_checkpoint(folder.checkpoints)  # none intact: one line now; damaged ones: a warning each
        resized = False
        if workers is not None:  # resize on resume (a fixed size), or a new [min, max] range
            new = dataclasses.replace(saved, workers=list(workers) if isinstance(workers, tuple) else workers)
            if (new.workers, new.elastic) != (saved.workers, saved.elastic):
                if new.elastic is None:
                    check_resizable(saved, saved.workers, new.workers)
                saved, resized = new, True
        if latest is not None:  # what the workers would refuse (privacy loosened...): one line now
            check_resumable(saved, latest)
        if resized:
            preflight(saved, latest)  # a size the config cannot run (a batch above the shards): one line, config kept
            folder.write_config(config_to_mapping(saved))
        return RunFolder.open(folder.root), saved
    if cfg is None:
        raise ValueError("a config is required unless resuming (--resume RUN_DIR)")
    if run_dir is not None:
        root = Path(run_dir).resolve()
        folder = RunFolder.fresh(root) if exclusive else RunFolder.open(root)
    else:
        folder = RunFolder.create(Path(out if out is not None else DEFAULT_OUT).resolve(), cfg.name)
    folder.write_config(config_to_mapping(cfg))
    return folder, cfg


def preflight(cfg: TrainConfig, checkpoint: str | os.PathLike | None = None) -> int:
    """Build what every worker will build (data set, shards, model) once, on the CPU, and run one
    batch forward and backward through the model, so that a config the workers cannot run fails
    here; returns the run's total steps. ``checkpoint`` (a resume's ``step_N`` folder): its model must
    load into the config's (a config.yaml edited to another model fails here, in one line)."""
    import torch

    from distsched.train.loop import total_steps_of

    bundle = cfg.data.load(cfg.seed)
    shards = cfg.data.shards(bundle.targets, cfg.workers, cfg.batch_size, cfg.seed)
    with torch.random.fork_rng():
        model = cfg.model.build(bundle.input_shape, bundle.num_classes)
        _one_batch(model, bundle.train, shards[0][: cfg.batch_size], bundle.num_classes)
    if checkpoint is not None:
        _check_model_loads(model, Path(checkpoint))
    if cfg.privacy is not None:  # clipping that cannot run at this size (per-layer, ghost across workers)
        from distsched.privacy.training import check_run

        check_run(cfg.privacy, model, cfg.workers, cfg.sync.every_step)
    total = total_steps_of(cfg, min(len(s) for s in shards) // cfg.batch_size)
    if total > MAX_STEPS:
        raise ValueError(f"a run may plan at most {MAX_STEPS:_} steps, this config plans {total:_} (steps/epochs)")
    if cfg.privacy is not None:  # the noise the workers will plan: an unreachable target_epsilon fails here
        from distsched.privacy.training import plan_noise

        try:
            plan_noise(cfg.privacy, [len(s) for s in shards], batch_size=cfg.batch_size, total_steps=total,
                       sync_every_step=cfg.sync.every_step)
        except ValueError as exc:
            raise ValueError(f"privacy: {exc}") from None
    return total


def _check_model_loads(model: Any, checkpoint: Path) -> None:
    """ValueError (one line) when rank 0's model in ``checkpoint`` does not load into ``model``."""
    from distsched.train.checkpoint import load_rank_state

    try:
        model.load_state_dict(load_rank_state(checkpoint, 0)["model"])
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise ValueError(f"model: the checkpoint {checkpoint} does not fit the config's model: {detail}") from None


def _one_batch(model: Any, data: Any, indices: Any, num_classes: int) -> None:
    """One forward and backward pass on one batch: a model that does not fit the data fails here
    with one line (ValueError), not in every worker after the cluster started."""
    from torch.utils.data import default_collate

    from distsched.data import token_cross_entropy

    x, y = default_collate([data[int(i)] for i in indices])
    try:
        out = model(x)
        want = (*y.shape, num_classes)  # (batch, K) for labels; (batch, T, V) for a target per position
        if tuple(out.shape) != want:
            shown = "(batch, " + ", ".join(str(d) for d in want[1:]) + ")"
            raise ValueError(f"the model's output has shape {tuple(out.shape)}, expected {shown}")
        token_cross_entropy(out, y).backward()
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"model: one batch of the data does not run through it: {first}") from None
    finally:
        model.zero_grad(set_to_none=True)


def read_summary(folder: RunFolder) -> dict[str, Any]:
    return json.loads(folder.summary_path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------- torchrun
class RefusedOnRankZero(ValueError):
    """On a torchrun rank other than 0: rank 0's checks refused the run (rank 0 reports why, in one line)."""


def run_torchrun(
    cfg: TrainConfig | None,
    *,
    out: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    timeout_s: float = 1800.0,
    on_start: Callable[[RunFolder, TrainConfig, bool], None] | None = None,
) -> dict[str, Any]:
    """One torchrun worker: join the group (env://), agree on the run folder, run the loop.

    Rank 0 creates the folder and broadcasts its path. ``workers`` is the launched world size.
    Restarted workers (``torchrun --max-restarts``) resume from the newest complete checkpoint.
    ``on_start(folder, cfg, resumed)`` is called on rank 0 once the folder exists (the CLI prints its
    header and follows the progress there); without it rank 0 prints a line per metrics record.
    """
    import torch.distributed as dist

    from distsched.sync import init_process_group

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    init_process_group(rank, world, "env://", timeout_s=timeout_s, local_rank=local_rank)
    try:
        if cfg is not None and cfg.workers != world:
            cfg = config_from_mapping({**config_to_mapping(cfg), "workers": world})
        box: list[Any] = [None]
        if rank == 0:
            restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
            if restarted and resume is None and run_dir is not None and RunFolder(run_dir).config_path.exists():
                resume = run_dir  # torchrun restarted the workers: the folder holds this very run
            try:  # the driver's checks, on rank 0: a user's mistake is rank 0's one line, the others stop quietly
                if cfg is not None and resume is None:
                    preflight(cfg)  # before the folder exists
                folder, cfg = prepare_run(cfg, out=out, run_dir=run_dir, resume=resume, exclusive=True)
                if resume is not None:  # its newest checkpoint's model must fit the config's
                    preflight(cfg, latest_checkpoint(folder.checkpoints, warn=False))
                box = [(str(folder.root), config_to_mapping(cfg))]
            except (ValueError, OSError) as exc:
                box = [str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__]
                dist.broadcast_object_list(box, src=0)
                raise
            if on_start is not None:
                on_start(folder, cfg, resume is not None)
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], str):
            raise RefusedOnRankZero(box[0])
        root, mapping = box[0]
        cfg = config_from_mapping(mapping)
        folder = RunFolder.open(root)
        session = LocalSession(folder.checkpoints, rank, world, local_rank, keep=cfg.checkpoint.keep)
        return train_worker(cfg, folder.root, session, echo=(rank == 0 and on_start is None))
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- processes
def _process_main(rank: int, world: int, init_method: str, mapping: dict, root: str, fault: dict | None) -> None:
    import torch.distributed as dist

    from distsched.sync import init_process_group

    init_process_group(rank, world, init_method, timeout_s=600.0)
    try:
        cfg = config_from_mapping(mapping)
        folder = RunFolder.open(root)
        session = LocalSession(folder.checkpoints, rank, world, rank, keep=cfg.checkpoint.keep)
        train_worker(cfg, root, session, fault=FaultInjection(**fault) if fault else None)
    finally:
        dist.destroy_process_group()


def run_processes(cfg: TrainConfig, folder: RunFolder, *, fault: FaultInjection | None = None,
                  checked: bool = False) -> dict[str, Any]:
    """Run ``cfg.workers`` local processes (torch.multiprocessing spawn, loopback rendezvous);
    resumes from the folder's newest complete checkpoint if there is one. Returns the summary.
    ``checked``: the caller has run :func:`preflight` on ``cfg`` already (it is not run again)."""
    import dataclasses

    import torch.multiprocessing as mp

    from distsched.sync import free_port

    if not checked:
        preflight(cfg)
    init_method = f"tcp://127.0.0.1:{free_port()}"
    args = (cfg.workers, init_method, config_to_mapping(cfg), str(folder.root),
            dataclasses.asdict(fault) if fault else None)
    mp.spawn(_process_main, args=args, nprocs=cfg.workers, join=True)
    return read_summary(folder)
