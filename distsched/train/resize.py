"""Resizing a run: restore a checkpoint of ``W`` workers at ``W'`` workers (pure functions).

Local SGD keeps a different model on every worker between syncs, so a checkpoint holds one state per
rank. On a resize the states are **averaged on load** (chosen over "only from a checkpoint right after a
sync", which would throw away up to H - 1 steps): every new rank starts from

- the model and the inner optimizer's state tensors (momentum, Adam moments) averaged over the old ranks
  (integer entries, e.g. BatchNorm's ``num_batches_tracked`` and Adam's ``step``, from rank 0). For plain
  local SGD this is the sync the old group would have done at that step;
- the sync engine of rank 0 (its anchors, i.e. the last averaged model, and the outer optimizer are equal
  on every rank): the round in progress continues, so a DiLoCo outer step at the next sync sees
  ``anchor - mean(local models)``, the old group's pseudo-gradient plus the new steps; error-feedback
  residuals averaged (the mean of what is owed is kept). H keeps coming from the sync rule;
- schedule, controller, privacy (accountant history, guard) of rank 0 (equal on every rank in group mode;
  ``local`` mode, with one accountant per shard, is refused). A reproducible run's noise generator restarts
  from its seed (``noise_rng`` dropped);
- the data position re-derived for the new shards (:func:`resharded_position`), the loss window of all old
  ranks summed into new rank 0 (so the next record is the mean of every loss since the last one).

The LR follows a declared world-size rule (:func:`world_lr_factor`), relative to the run's first size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from distsched.train.config import TrainConfig

WORLD_LR_RULES = ("none", "linear", "sqrt")


def world_lr_factor(rule: str, world: int, base_world: int) -> float:
    """LR multiplier at ``world`` workers for a run started at ``base_world``: ``none`` 1,
    ``linear`` W / W0 (Goyal et al. 2017, linear scaling), ``sqrt`` sqrt(W / W0) (Krizhevsky 2014)."""
    if rule not in WORLD_LR_RULES:
        raise ValueError(f"world_lr must be one of {', '.join(WORLD_LR_RULES)}, got {rule!r}")
    if world < 1 or base_world < 1:
        raise ValueError(f"world sizes must be >= 1, got {world} and {base_world}")
    ratio = world / base_world
    return 1.0 if rule == "none" else ratio if rule == "linear" else math.sqrt(ratio)


def check_resizable(cfg: TrainConfig, old_world: int, new_world: int) -> None:
    """Refuse a resize the loop cannot do: DP in ``local`` mode (one accountant per shard, charged at its
    shard's sample rate) at the old or the new number of workers. Checked before anything is written
    (:func:`~distsched.train.run.prepare_run`) and by each worker that restores the checkpoint."""
    if cfg.privacy is None or old_world == new_world:
        return
    from distsched.privacy.training import resolve_mode

    mode, every_step = cfg.privacy.mode, cfg.sync.every_step
    if "local" in (resolve_mode(mode, old_world, every_step), resolve_mode(mode, new_world, every_step)):
        raise ValueError(f"privacy: local mode (one accountant per shard) cannot be resized from {old_world} to "
                         f"{new_world} workers; resume the run at its own {old_world} workers")


def average_tree(trees: list[Any]) -> Any:
    """Element-wise mean of floating tensors across ``trees`` (same structure); every other leaf
    (integer tensors, numbers, strings) is taken from ``trees[0]``."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        if first.is_floating_point() or first.is_complex():
            return torch.stack([t.to(first.dtype) for t in trees]).mean(dim=0)
        return first.clone()
    if isinstance(first, dict):
        return {k: average_tree([t[k] for t in trees]) for k in first}
    if isinstance(first, (list, tuple)):
        out = [average_tree([t[i] for t in trees]) for i in range(len(first))]
        return type(first)(out) if isinstance(first, tuple) else out
    return first


def resharded_position(epoch: int, batch: int, old_batches_per_epoch: int, new_batches_per_epoch: int
                       ) -> dict[str, int]:
    """:class:`~distsched.data.ShardBatches` state on a new shard: the fraction of an epoch done,
    ``f = epoch + batch / old_bpe``, kept: ``(floor(f), round(frac(f) * new_bpe))`` (an epoch's end
    rolls over). Deterministic: every rank derives the same position."""
    frac = batch / max(old_batches_per_epoch, 1)
    new_batch = int(round(frac * new_batches_per_epoch))
    if new_batch >= new_batches_per_epoch:
        return {"epoch": epoch + 1, "batch": 0}
    return {"epoch": epoch, "batch": new_batch}


def check_no_exchange_in_flight(engine: dict[str, Any]) -> None:
    """Refuse to resize a checkpoint whose sync engine state ``engine`` has exchanges in flight
    (``sync.delay > 0``): each rank's pending all-reduce belongs to the old group."""
    if any(p is not None for p in engine.get("pending") or []):
        raise ValueError("resize: the checkpoint has sync exchanges in flight (sync.delay > 0); "
                         "resume it at its own number of workers")


def _engine(states: list[dict[str, Any]]) -> dict[str, Any]:
    engine = dict(states[0]["engine"])
    check_no_exchange_in_flight(engine)
    comp = engine.get("compression")
    if comp is not None:
        engine["compression"] = [
            [{"anchor": b["anchor"],
              "residual": None if b["residual"] is None else average_tree([s["engine"]["compression"][f][i]["residual"]
                                                                           for s in states])}
             for i, b in enumerate(bs)]
            for f, bs in enumerate(comp)]
    return engine


def resize_rank_state(states: list[dict[str, Any]], new_world: int, new_rank: int,
                      old_bpe: int | None = None, new_bpe: int | None = None) -> dict[str, Any]:
    """The state of rank ``new_rank`` of ``new_world`` from every old rank's checkpoint state (see the
    module docstring). ``old_bpe``/``new_bpe``: batches per epoch of the old and new shards, to re-derive a
    :class:`~distsched.data.ShardBatches` position (a Poisson sampler's ``step`` is kept as is)."""
    if not states:
        raise ValueError("resize: no rank states")
    if not 0 <= new_rank < new_world:
        raise ValueError(f"rank must be in [0, {new_world}), got {new_rank}")
    s0 = states[0]
    out = dict(s0)
    out["world_size"] = new_world
    out["base_world"] = int(s0.get("base_world", s0["world_size"]))
    out["model"] = average_tree([s["model"] for s in states])
    opt = dict(s0["optimizer"])
    opt["state"] = average_tree([s["optimizer"]["state"] for s in states])
    out["optimizer"] = opt
    out["engine"] = _engine(states)
    sampler = dict(s0["sampler"])
    if "epoch" in sampler and "batch" in sampler and old_bpe is not None and new_bpe is not None:
        sampler = resharded_position(int(sampler["epoch"]), int(sampler["batch"]), old_bpe, new_bpe)
    out["sampler"] = sampler
    if s0.get("privacy"):
        priv = {k: v for k, v in s0["privacy"].items() if k != "noise_rng"}
        out["privacy"] = priv
    total = (sum(float(s["window"][0]) for s in states), sum(int(s["window"][1]) for s in states))
    out["window"] = total if new_rank == 0 else (0.0, 0)
    out["window_steps"] = int(s0.get("window_steps", s0["window"][1]))  # steps since the record: every rank's
    out["rng"] = None  # the loop reseeds: seed + 1 + rank + step (deterministic, new per rank)
    return out
