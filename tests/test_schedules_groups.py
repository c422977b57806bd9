"""ScheduledLR keeps each param group's initial LR as its base, as torch's schedulers and HF's
``get_cosine_schedule_with_warmup`` do: ``lr_g(t) = base_g * schedule(t) / peak``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distsched import schedules as S

BASES = (1e-4, 1e-2)  # a fine-tuned backbone and a fresh head: 100x apart


def _two_groups(bases: tuple[float, ...] = BASES) -> torch.optim.Optimizer:
    groups = [{"params": [nn.Parameter(torch.zeros(2))], "lr": b} for b in bases]
    return torch.optim.SGD(groups, lr=0.5, momentum=0.9)


def _run(opt: torch.optim.Optimizer, scheduler, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return out


def test_two_groups_follow_torch_cosine_annealing():
    T = 120
    ref_opt, opt = _two_groups(), _two_groups()
    ref = _run(ref_opt, torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=T, eta_min=0.0), T + 1)
    ours = _run(opt, S.ScheduledLR(opt, S.cosine(lr=0.1, total_steps=T)), T + 1)  # the schedule's lr: shape only
    for t in range(T + 1):
        assert ours[t] == pytest.approx(ref[t], rel=1e-12, abs=1e-18), f"step {t}"
    assert ours[0] == list(BASES) and ours[T // 2][1] / ours[T // 2][0] == pytest.approx(100.0)


def _hf_cosine_with_warmup(step: int, warmup: int, total: int, num_cycles: float = 0.5) -> float:
    """transformers.optimization._get_cosine_schedule_with_warmup_lr_lambda, written out (the factor
    LambdaLR multiplies each group's initial LR by)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


@pytest.mark.parametrize(("warmup", "total"), [(10, 100), (1, 7), (25, 250)])
def test_two_groups_follow_hf_cosine_with_warmup(warmup, total):
    ref_opt, opt = _two_groups(), _two_groups()
    hf = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda t: _hf_cosine_with_warmup(t, warmup, total))
    ref = _run(ref_opt, hf, total + 1)
    # linear warmup 0 -> peak over W steps, then a cosine over the remaining T - W steps
    shape = S.join([S.linear(lr=3.0, total_steps=warmup, start_factor=0.0, end_factor=1.0),
                    S.cosine(lr=3.0, total_steps=total - warmup)], boundaries=[warmup])
    ours = _run(opt, S.ScheduledLR(opt, shape), total + 1)
    for t in range(total + 1):
        assert ours[t] == pytest.approx(ref[t], rel=1e-12, abs=1e-18), f"step {t}"
    assert ours[total] == [0.0, 0.0]


def test_one_group_at_the_schedule_lr_is_unchanged_and_groups_keep_their_ratio():
    sched = S.warmup(S.cosine(lr=0.2, total_steps=50, min_lr=0.02), warmup_steps=5)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    assert _run(opt, S.ScheduledLR(opt, sched), 60) == [[sched(t)] for t in range(60)]
    opt2 = _two_groups()
    lrs = _run(opt2, S.ScheduledLR(opt2, sched), 60)
    for t in range(60):  # min_lr scales with the group
        assert lrs[t] == pytest.approx([b * sched(t) / 0.2 for b in BASES], rel=1e-15)


def test_layerwise_multipliers_still_set_the_lr_from_the_schedule():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    sched = S.cosine(lr=0.1, total_steps=30)
    opt = torch.optim.SGD(S.layerwise(model, alpha=0.5), lr=7.0)  # the optimizer's lr is not read
    assert _run(opt, S.ScheduledLR(opt, sched), 31) == [[sched(t) * 0.5, sched(t)] for t in range(31)]
    opt = _two_groups()
    assert _run(opt, S.ScheduledLR(opt, sched, multipliers=[1.0, 0.25]), 5) == [
        [sched(t), sched(t) * 0.25] for t in range(5)
    ]


def test_resume_keeps_the_group_bases():
    """A fresh optimizer built with other LRs, then loaded from the checkpoint: the bases travel in the
    optimizer's ``initial_lr`` and the adapter's factors, and the sequence is the uninterrupted one."""
    sched = S.cosine(lr=0.1, total_steps=40)
    opt = _two_groups()
    uninterrupted = _run(opt, S.ScheduledLR(opt, sched), 40)
    opt = _two_groups()
    a = S.ScheduledLR(opt, sched)
    _run(opt, a, 20)
    opt2 = _two_groups((0.3, 0.3))
    opt2.load_state_dict(opt.state_dict())
    b = S.ScheduledLR(opt2, sched)
    b.load_state_dict(a.state_dict())
    assert _run(opt2, b, 20) == uninterrupted[20:]
    assert uninterrupted[25] == pytest.approx([base * sched(25) / 0.1 for base in BASES], rel=1e-15)


@pytest.mark.parametrize(
    ("sched", "peak"),
    [
        (S.cosine(lr=0.3, total_steps=10), 0.3),
        (S.warmup(S.cosine(lr=0.3, total_steps=10), warmup_steps=3), 0.3),
        (S.scale(S.constant(0.4), factor=0.5), 0.2),
        (S.clamp(S.constant(0.4), max_lr=0.25), 0.25),
        (S.join([S.constant(0.1), S.constant(0.3)], boundaries=[5]), 0.3),
        (S.repeat(S.one_cycle(lr=0.6, total_steps=10), period=10), 0.6),
        (S.curriculum_spike([S.constant(0.1), S.constant(0.2)], boundaries=[5], spike_lr=0.5), 0.5),
    ],
)
def test_peak_lr(sched, peak):
    assert S.peak_lr(sched) == pytest.approx(peak)


def test_refusals_name_the_fix():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
    with pytest.raises(ValueError, match=r"param group 0 has lr 0.0.*multipliers=\[1.0"):
        S.ScheduledLR(opt, S.cosine(lr=0.1, total_steps=10))
    assert S.ScheduledLR(opt, S.cosine(lr=0.1, total_steps=10), multipliers=[1.0]).get_last_lr() == [0.1]
    with pytest.raises(ValueError, match="cannot tell the peak lr of function.*peak="):
        S.ScheduledLR(_two_groups(), lambda t: 0.1 / (1 + t))
    lrs = S.ScheduledLR(_two_groups(), lambda t: 0.1 / (1 + t), peak=0.1)
    lrs.step()
    assert lrs.get_last_lr() == pytest.approx([b * 0.5 for b in BASES])
