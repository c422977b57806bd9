"""Streaming fragments and the scheduled outer optimizer, in one process (world size 1): the cut by
module, each fragment's sync steps (QSR per fragment) against a walk of the rule, and the outer LR /
momentum schedule against torch's SGD driven by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from distsched import schedules as S
from distsched.sync import QSR, FixedH, LocalSGD, OuterSGD, assign_fragments, balanced_cuts


def _brute_force_cuts(sizes: list[int], parts: int) -> int:
    """Smallest largest part over every contiguous split (independent of the DP)."""
    best = math.inf
    for cuts in itertools.combinations(range(1, len(sizes)), parts - 1):
        bounds = (0, *cuts, len(sizes))
        best = min(best, max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


@pytest.mark.parametrize(
    "sizes,parts",
    [([112, 272, 51], 2), ([5, 5, 5, 5], 2), ([1, 100, 1, 1], 2), ([3, 1, 4, 1, 5, 9, 2, 6], 3),
     ([7], 1), ([2, 2, 2], 3), ([10, 1, 1, 1, 1, 1, 10], 4)],
)
def test_balanced_cuts_are_contiguous_and_minimize_the_largest_part(sizes, parts):
    frag = balanced_cuts(sizes, parts)
    assert frag == sorted(frag) and set(frag) == set(range(parts))  # contiguous, none empty
    largest = max(sum(s for s, f in zip(sizes, frag) if f == k) for k in range(parts))
    assert largest == _brute_force_cuts(sizes, parts)


def test_balanced_cuts_refuses_more_parts_than_modules():
    with pytest.raises(ValueError, match=r"fragments must be <= the number of modules with parameters \(2\), got 3"):
        balanced_cuts([1, 2], 3)


def test_fragments_follow_modules_and_buffers_follow_their_module():
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 16),
                                torch.nn.Linear(16, 3))
    # units: 0: 112, 1 (BatchNorm): 32, 2: 272, 3: 51 -> best split in 2: [0, 1] | [2, 3] (largest 323)
    frag = assign_fragments(model, 2)
    assert [frag[id(p)] for p in model.parameters()] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {frag[id(b)] for b in model[1].buffers() if b.is_floating_point()} == {0}
    assert set(assign_fragments(model, 1).values()) == {0}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8),
                               torch.nn.Linear(8, 2))


def test_fixed_h_fragments_are_staggered_within_the_round():
    eng = LocalSGD(_model(), FixedH(8), total_steps=24, fragments=4)
    events = {t: eng.synced_fragments for t in range(24) if eng.step(t)}
    # fragment f first syncs after step ceil((f + 1) * 8 / 4) - 1, then every 8; all at the last step
    assert events == {1: [0], 3: [1], 5: [2], 7: [3], 9: [0], 11: [1], 13: [2], 15: [3], 17: [0], 19: [1],
                      21: [2], 23: [0, 1, 2, 3]}
    assert eng.rounds == 3 and eng.fragment_syncs == 15


def test_qsr_per_fragment_reads_the_lr_at_each_fragment_round():
    total, F = 200, 3
    sched = S.cosine(lr=0.1, total_steps=total)
    rule = QSR(h_base=3, alpha=0.2, h_max=40)
    eng = LocalSGD(_model(), QSR(h_base=3, alpha=0.2, h_max=40), sched, total_steps=total, fragments=F)
    got = {f: [] for f in range(F)}
    for t in range(total):
        if eng.step(t):
            for f in eng.synced_fragments:
                got[f].append(t)
    # reference walk: H_0 from the rule at step 0; fragment f's first sync after ceil((f+1) H_0 / F)
    # steps; after a sync at t its next period is the rule's at t + 1, cut at the end of the run
    h0 = rule.next_period(0, sched(0))
    expected = {}
    for f in range(F):
        syncs, nxt = [], min(math.ceil((f + 1) * h0 / F), total)
        while True:
            syncs.append(nxt - 1)
            if nxt >= total:
                break
            nxt += rule.next_period(nxt, sched(nxt), total_steps=total)
        expected[f] = syncs
    assert got == expected
    assert expected[0] != expected[2]  # the fragments really are on different steps
    assert all(s[-1] == total - 1 for s in got.values())


def test_scheduled_outer_lr_and_momentum_match_sgd_driven_by_hand():
    lr_sched = {"name": "cosine", "lr": 0.9, "total_steps": 5, "min_lr": 0.1}

    def mom_sched(r: int) -> float:  # any round -> value callable
        return 0.5 + 0.1 * r

    outer = OuterSGD(lr=lr_sched, momentum=mom_sched, nesterov=True)
    lr_fn = S.from_spec(lr_sched)
    model, ref_model = _model(), _model()
    eng = LocalSGD(model, FixedH(2), total_steps=10, outer_optimizer=outer)
    anchors = [p.detach().clone() for p in ref_model.parameters()]
    ref_outer = torch.optim.SGD(anchors, lr=1.0, momentum=0.5, nesterov=True)
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    rounds = 0
    for t in range(10):
        for m, gen in ((model, gen_a), (ref_model, gen_b)):
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=gen), alpha=0.01)
        eng.step(t)
        if t % 2 == 1:  # reference: outer round r uses lr(r), momentum(r)
            for g in ref_outer.param_groups:
                g["lr"], g["momentum"] = lr_fn(rounds), mom_sched(rounds)
            with torch.no_grad():
                for a, p in zip(anchors, ref_model.parameters()):
                    a.grad = a - p
            ref_outer.step()
            with torch.no_grad():
                for a, p in zip(anchors, ref_model.parameters()):
                    p.copy_(a)
            rounds += 1
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert torch.equal(p, q), t
    assert rounds == 5 and eng.outer.param_groups[0]["lr"] == pytest.approx(lr_fn(4))
    assert lr_fn(0) != lr_fn(4)  # the schedule really moved


def test_constant_outer_spec_equals_the_default_engine_bit_for_bit():
    runs = []
    for outer in (OuterSGD(lr=0.7, momentum=0.9), OuterSGD(lr={"name": "constant", "lr": 0.7}, momentum=0.9)):
        model = _model()
        eng = LocalSGD(model, FixedH(3), total_steps=9, outer_optimizer=outer)
        gen = torch.Generator().manual_seed(2)
        for t in range(9):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen), alpha=0.01)
            eng.step(t)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"fragments": 0}, r"fragments must be an integer >= 1, got 0"),
     ({"fragments": 5}, r"fragments must be <= the number of modules with parameters \(4\), got 5"),
     ({"compression": "int4"}, r"compression must be one of 'none', 'bf16', 'fp16', 'int8', got 'int4'"),
     ({"delay": -1}, r"delay must be an integer >= 0, got -1"),
     ({"mix": 1.0}, r"mix must be in \[0.0, 1.0\), got 1.0")],
)
def test_engine_option_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalSGD(_model(), FixedH(2), **kwargs)


def test_outer_sgd_schedule_errors():
    with pytest.raises(ValueError, match=r"unknown schedule 'nope' in lr\.name"):
        OuterSGD(lr={"name": "nope"})
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.5"):
        OuterSGD(momentum=lambda r: 1.5).at(0)


def test_config_sync_block_carries_the_engine_options():
    from distsched.train import SyncConfig

    sync = SyncConfig.from_spec({"rule": "fixed", "h": 4, "fragments": 2, "compression": "int8", "delay": 1,
                                 "mix": 0.25, "error_feedback": False,
                                 "outer": {"lr": {"name": "cosine", "lr": 0.7, "total_steps": 10}, "momentum": 0.9}})
    rule, options = sync.build_rule(), sync.engine_options()
    assert rule == FixedH(4)
    outer = options.pop("outer_optimizer")
    assert options == {"fragments": 2, "compression": "int8", "delay": 1, "mix": 0.25, "error_feedback": False,
                       "average_buffers": True, "average_momentum": False, "lr_compensation": None}
    assert outer.at(0) == (pytest.approx(0.7), 0.9) and outer.at(10)[0] == pytest.approx(0.0, abs=1e-12)
    eng = LocalSGD(_model(), rule, total_steps=8, outer_optimizer=outer, **options)
    assert (eng.fragments, eng.delay, eng.mix, eng.error_feedback) == (2, 1, 0.25, False)


def test_config_compression_from_the_lr():
    from distsched.sync import LRCompression
    from distsched.train import SyncConfig

    options = SyncConfig.from_spec({"rule": "fixed", "h": 4,
                                    "compression": {"lr_peak": 0.1, "levels": [[0.5, "bf16"], [0, "int8"]]}}
                                   ).engine_options()
    assert options["compression"] == LRCompression(lr_peak=0.1, levels=((0.5, "bf16"), (0.0, "int8")))


@pytest.mark.parametrize(
    "extra,match",
    [({"compression": {"levels": [[0, "int8"]]}}, r"missing required key compression.lr_peak"),
     ({"compression": {"lr_peak": 0.1, "bits": 4}}, r"unknown key compression.bits"),
     ({"compression": {"lr_peak": 0.1, "levels": [[0, "int3"]]}}, r"sync.compression.codec must be one of"),
     ({"compression": "int4"}, r"sync.compression must be one of 'none', 'bf16', 'fp16', 'int8', got 'int4'"),
     ({"fragments": 0}, r"sync.fragments must be an integer >= 1, got 0"),
     ({"delay": "2"}, r"sync.delay must be an integer >= 0, got '2'"),
     ({"mix": 1}, r"sync.mix must be in \[0.0, 1.0\), got 1"),
     ({"outer": {"lr": {"name": "nope"}}}, r"unknown schedule 'nope' in lr\.name")],
)
def test_config_sync_block_errors(extra, match):
    from distsched.train import SyncConfig

    with pytest.raises(ValueError, match=match):
        SyncConfig.from_spec({"rule": "fixed", "h": 4, **extra})


def test_readme_engine_options_yaml_is_a_valid_sync_block():
    import re
    from pathlib import Path

    import yaml

    from distsched.train import SyncConfig

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Fragments, compressed exchange, overlap") :]
    block = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    options = SyncConfig.from_spec(block["sync"]).engine_options()
    assert (options["fragments"], options["compression"], options["delay"]) == (4, "int8", 2)
    assert options["outer_optimizer"].scheduled
