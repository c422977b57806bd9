"""LocalSGD without a process group (world size 1): rounds follow the rule, nothing is sent, the
model is untouched by a sync; LR compensation and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from distsched import schedules as S
from distsched.sync import QSR, FixedH, LocalSGD, LRCompensation, OuterSGD, default_backend, suggest_alpha


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def _run(eng: LocalSGD, model: torch.nn.Module, steps: int) -> tuple[list[int], list[float]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    syncs, factors = [], []
    for t in range(steps):
        factors.append(eng.lr_factor(t))
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        before = [p.detach().clone() for p in model.parameters()]
        if eng.step(t):
            syncs.append(t)
            for a, p in zip(before, model.parameters()):
                assert torch.equal(a, p)  # averaging over one worker changes nothing
    return syncs, factors


def test_world_size_one_counts_rounds_and_sends_nothing():
    assert not torch.distributed.is_initialized()
    model = _model()
    eng = LocalSGD(model, FixedH(4), total_steps=10)
    syncs, _ = _run(eng, model, 10)
    assert syncs == [3, 7, 9]  # min(4(r+1), 10) - 1
    assert eng.rounds == math.ceil(10 / 4)
    assert eng.bytes_sent == 0
    assert eng.world_size == 1 and eng.finalize() is False


def test_lr_factor_follows_the_rule_period_not_the_cut():
    model = _model()
    sched = S.cosine(lr=0.1, total_steps=40)
    rule = QSR(h_base=2, alpha=suggest_alpha(0.1, 2))  # H = h_base = h_ref at the peak: factor 1
    eng = LocalSGD(model, rule, sched, total_steps=40, lr_compensation=(2, 0.5))
    # independent reference: the round containing t started at s with H = QSR(s), factor min(1, sqrt(2/H))
    start, expected = 0, []
    while start < 40:
        h = rule.next_period(start, sched(start))  # uncut period
        expected += [min(1.0, math.sqrt(2 / h))] * min(h, 40 - start)
        start += min(h, 40 - start)
    _, factors = _run(eng, model, 40)
    assert factors == pytest.approx(expected)
    assert factors[0] == 1.0 and factors[-1] < 0.5 and factors == sorted(factors, reverse=True)


def test_lr_factor_is_one_without_compensation():
    model = _model()
    eng = LocalSGD(model, FixedH(64))
    assert eng.lr_factor(0) == 1.0
    assert LocalSGD(model, FixedH(64), lr_compensation=LRCompensation(4, 1.0)).lr_factor(0) == 1 / 16


def test_default_backend_follows_cuda():
    assert default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rule": QSR(4, 0.2)}, r"schedule must be given for rule QSR"),
        ({"rule": FixedH(4), "average_momentum": True}, r"optimizer must be given when average_momentum=True"),
        ({"rule": FixedH(4), "total_steps": 0}, r"total_steps must be an integer >= 1, got 0"),
        ({"rule": FixedH(4), "bucket_bytes": 0}, r"bucket_bytes must be an integer >= 1, got 0"),
        ({"rule": FixedH(4), "lr_compensation": 3}, r"lr_compensation must be"),
        ({"rule": "qsr"}, r"rule must have next_period"),
        ({"rule": FixedH(4), "group": object()}, r"group must be None when torch.distributed is not initialized"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LocalSGD(_model(), **kwargs)


def test_outer_sgd_checks_its_arguments():
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        OuterSGD(momentum=1.0)
    with pytest.raises(ValueError, match=r"lr must be > 0, got 0.0"):
        OuterSGD(lr=0.0)


def test_readme_local_sgd_snippet_runs_and_its_round_count_holds(capsys):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text[text.index("\n## Local SGD") :], re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    total, sched, rule = ns["T"], ns["sched"], QSR(8, suggest_alpha(0.1, 8))
    start, rounds = 0, 0
    while start < total:  # the QSR walk, independent of the engine
        start += rule.next_period(start, sched(start), total_steps=total)
        rounds += 1
    assert ns["engine"].rounds == rounds
    assert f"{rounds} rounds instead of {total}" in code  # the comment in the README is true
    assert capsys.readouterr().out.split()[:2] == [str(rounds), "0"]


def test_outer_optimizer_refuses_a_model_whose_parameters_changed():
    """DiLoCo's anchors mirror the parameters; a layer swapped after construction must not be zipped
    silently against the old anchors."""

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    engine = LocalSGD(model, rule=FixedH(2), schedule=lambda t: 0.1, total_steps=10, outer_optimizer=OuterSGD())
    assert engine.step(0) is False and engine.step(1) is True  # a normal round with the outer step
    model[1] = torch.nn.Linear(3, 5)
    engine.step(2)
    with pytest.raises(ValueError, match="outer_optimizer"):
        engine.step(3)


def test_refuses_a_launcher_that_declares_several_workers_without_a_process_group(monkeypatch):
    """Issue 12.3: built before init_process_group under torchrun (WORLD_SIZE=2) the engine used to
    count rounds and send nothing; like torch's PeriodicModelAverager it now refuses."""
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"not initialized but WORLD_SIZE=2: call torch.distributed.init_process_"):
        LocalSGD(_model(), FixedH(4))
    monkeypatch.setenv("WORLD_SIZE", "1")  # a single process without a group stays allowed
    assert LocalSGD(_model(), FixedH(4)).world_size == 1


@pytest.mark.parametrize("steps", [[0, 1, 1], [0, 2, 1], [3, 0]])
def test_refuses_a_step_that_repeats_or_goes_backwards(steps):
    eng = LocalSGD(_model(), FixedH(2), total_steps=10)
    for t in steps[:-1]:
        eng.step(t)
    rounds = eng.rounds
    with pytest.raises(ValueError, match=rf"step must increase: got {steps[-1]} after {steps[-2]}"):
        eng.step(steps[-1])
    assert eng.rounds == rounds  # nothing counted for the refused step


def test_step_order_survives_a_resume():
    eng = LocalSGD(_model(), FixedH(2), total_steps=10)
    for t in range(3):
        eng.step(t)
    fresh = LocalSGD(_model(), FixedH(2), total_steps=10)
    fresh.load_state_dict(eng.state_dict())
    with pytest.raises(ValueError, match="step must increase: got 2 after 2"):
        fresh.step(2)
    assert fresh.step(3) is True  # the round 2..3 ends at step 3, as in the uninterrupted run
