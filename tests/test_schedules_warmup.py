"""One warmup convention: ``total_steps`` is the whole run, warmup included (HF, timm), for every
catalogue entry with a ``total_steps``; the run ends at the schedule's final value on step total_steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distsched import schedules as S


def _hf_cosine(step: int, warmup: int, total: int) -> float:
    """transformers' ``_get_cosine_schedule_with_warmup_lr_lambda`` (num_cycles = 0.5), written out."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def _hf_linear(step: int, warmup: int, total: int) -> float:
    """transformers' ``_get_linear_schedule_with_warmup_lr_lambda``, written out."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def _lrs(opt: torch.optim.Optimizer, scheduler, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return out


def _opt() -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1e-4, 1e-2)], lr=1.0)


@pytest.mark.parametrize(
    ("spec", "hf"),
    [
        ({"name": "cosine", "lr": 1e-2, "total_steps": 100, "warmup_steps": 10}, _hf_cosine),
        ({"name": "linear", "lr": 1e-2, "total_steps": 100, "start_factor": 1.0, "end_factor": 0.0,
          "warmup_steps": 10}, _hf_linear),
    ],
)
def test_spec_with_warmup_equals_hf_on_two_groups(spec, hf):
    total, warmup = spec["total_steps"], spec["warmup_steps"]
    ref_opt, opt = _opt(), _opt()
    # up to the run's end (past it HF's cosine climbs back up, ours holds min_lr)
    ref = _lrs(ref_opt, torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda t: hf(t, warmup, total)), total + 1)
    ours = _lrs(opt, S.ScheduledLR(opt, S.from_spec(spec)), total + 1)
    for t in range(total + 1):
        assert ours[t] == pytest.approx(ref[t], rel=1e-12, abs=1e-18), f"step {t}"
    assert ours[total] == [0.0, 0.0]


# every catalogue entry with a total_steps, with warmup_steps from the spec: (spec, final value)
WITH_TOTAL = [
    ({"name": "cosine", "lr": 0.1, "total_steps": 100, "min_lr": 1e-3}, 1e-3),
    ({"name": "polynomial", "lr": 0.1, "total_steps": 100, "power": 2.0, "min_lr": 1e-3}, 1e-3),
    ({"name": "linear", "lr": 0.1, "total_steps": 100, "start_factor": 1.0, "end_factor": 0.1}, 0.01),
    ({"name": "one_cycle", "lr": 0.1, "total_steps": 100}, 0.1 / 25 / 1e4),
    ({"name": "wsd", "lr": 0.1, "total_steps": 100, "decay_steps": 20, "min_lr": 1e-3}, 1e-3),  # its own warmup
    ({"name": "linear_beta", "total_steps": 100, "beta_start": 0.01, "beta_end": 0.02}, 0.02),
]


@pytest.mark.parametrize(("spec", "final"), WITH_TOTAL, ids=[s["name"] for s, _ in WITH_TOTAL])
@pytest.mark.parametrize("warmup", [0, 1, 10, 40])
def test_total_steps_is_the_whole_run(spec, final, warmup):
    sched = S.from_spec({**spec, "warmup_steps": warmup})
    last = spec["total_steps"] if spec["name"] not in ("one_cycle", "linear_beta") else spec["total_steps"] - 1
    assert sched(last) == pytest.approx(final, rel=1e-12)  # reached on the run's last step...
    if warmup:
        assert sched(last - 1) != pytest.approx(final, rel=1e-9)  # ...not before
        assert sched(0) == 0.0
    assert sched(10**9) == pytest.approx(final, rel=1e-12)  # and held
    assert S.from_spec(S.to_spec(sched)) == sched and S.to_spec(sched)["total_steps"] == spec["total_steps"]


def test_python_warmup_wrapper_same_convention_through_scale_and_clamp():
    T, W = 50, 5
    ref = [_hf_cosine(min(t, T), W, T) * 0.2 for t in range(T + 3)]  # held after T
    for sched in (
        S.warmup(S.cosine(lr=0.2, total_steps=T), warmup_steps=W),
        S.warmup(S.scale(S.cosine(lr=0.4, total_steps=T), factor=0.5), warmup_steps=W),
        S.warmup(S.clamp(S.cosine(lr=0.2, total_steps=T), max_lr=1.0), warmup_steps=W),
    ):
        assert sched.values(T + 3) == pytest.approx(ref, rel=1e-12, abs=1e-18)
    # no total_steps: the schedule's own steps start after the warmup (torch's SequentialLR)
    stepped = S.warmup(S.step(lr=0.1, step_size=10, gamma=0.5), warmup_steps=W)
    assert [stepped(W + k) for k in (0, 9, 10, 19, 20)] == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_warmup_longer_than_the_run_is_refused():
    with pytest.raises(ValueError, match=r"warmup_steps must be < total_steps=10 .*whole run.*got 10"):
        S.from_spec({"name": "cosine", "lr": 0.1, "total_steps": 10, "warmup_steps": 10})
    with pytest.raises(ValueError, match=r"after warmup_steps=9 of total_steps=10: total_steps must be"):
        S.warmup(S.one_cycle(lr=0.1, total_steps=10), warmup_steps=9)
