"""LR range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks"): sweep the LR
exponentially over a few hundred steps, smooth the loss, stop when it diverges, suggest an LR."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from distsched._checks import check_int, check_positive, check_range


@dataclasses.dataclass(frozen=True)
class RangeTestResult:
    """Swept ``lrs``, raw and smoothed ``losses``; ``suggested_lr`` (steepest descent of the smoothed
    loss in log-LR, the first 10% of the sweep skipped), ``min_loss_lr`` (LR at the smoothed minimum)
    and ``diverged_at`` (LR at the stop, None when the sweep ended)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggested_lr: float
    min_loss_lr: float
    diverged_at: float | None

    def plot(self, path: str | os.PathLike) -> Path:
        """Smoothed loss against LR (log x) as a PNG, the suggestion marked."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
        ax.plot(self.lrs, self.losses, alpha=0.3, label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        ax.axvline(self.suggested_lr, color="C2", ls="--", label=f"suggested {self.suggested_lr:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.set_title("LR range test")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def _batches(data: Iterable[Any]):
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("batches must yield at least one batch, got an empty iterable")


def lr_range_test(
    model: Any,
    optimizer: Any,
    loss_fn: Callable[[Any, Any], Any],
    batches: Iterable[Any],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge_threshold: float = 4.0,
    restore: bool = True,
) -> RangeTestResult:
    """Train ``num_steps`` steps with ``lr_k = start_lr * (end_lr / start_lr)^(k / (num_steps - 1))``.

    ``loss_fn(model, batch)`` returns the loss tensor; ``batches`` is re-iterated when exhausted.
    Smoothed loss: bias-corrected EMA ``s_k = (beta a_{k-1} + (1 - beta) L_k) / (1 - beta^k)``.
    The sweep stops once ``s_k > diverge_threshold * min s`` or the loss is not finite. With ``restore``
    the model's and optimizer's ``state_dict`` are put back afterwards (groups' ``lr`` included).
    Each param group gets ``lr_k * group.get("lr_multiplier", 1)``.
    """
    start = check_positive("start_lr", start_lr)
    end = check_positive("end_lr", end_lr)
    if end <= start:
        raise ValueError(f"end_lr must be > start_lr={start}, got {end_lr!r}")
    n = check_int("num_steps", num_steps, 2)
    beta = check_range("smoothing", smoothing, 0.0, 1.0, high_open=True)
    thr = check_range("diverge_threshold", diverge_threshold, 1.0, math.inf, low_open=True, high_open=True)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())) if restore else None
    lrs, losses, smoothed = [], [], []
    avg, best, diverged = 0.0, math.inf, None
    it = _batches(batches)
    was_training = model.training
    model.train()
    try:
        for k in range(n):
            lr = start * (end / start) ** (k / (n - 1))
            for group in optimizer.param_groups:
                group["lr"] = lr * float(group.get("lr_multiplier", 1.0))
            optimizer.zero_grad()
            loss = loss_fn(model, next(it))
            value = float(loss.detach())
            lrs.append(lr)
            losses.append(value)
            if not math.isfinite(value):
                smoothed.append(math.inf)
                diverged = lr
                break
            avg = beta * avg + (1.0 - beta) * value
            s = avg / (1.0 - beta ** (k + 1))
            smoothed.append(s)
            best = min(best, s)
            if s > thr * best:
                diverged = lr
                break
            loss.backward()
            optimizer.step()
    finally:
        if saved is not None:
            model.load_state_dict(saved[0])
            optimizer.load_state_dict(saved[1])
        model.train(was_training)
    sm = np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(sm)
    i_min = int(np.nanargmin(np.where(finite, sm, np.nan))) if finite.any() else 0
    skip = max(1, len(lrs) // 10)  # the first smoothed values are mostly batch-to-batch noise
    if i_min - skip >= 2:
        slope = np.gradient(sm[skip : i_min + 1], np.log(np.asarray(lrs[skip : i_min + 1])))
        suggested = lrs[skip + int(np.argmin(slope))]
    else:
        suggested = lrs[i_min]
    return RangeTestResult(lrs, losses, smoothed, suggested, lrs[i_min], diverged)
