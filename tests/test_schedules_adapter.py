"""ScheduledLR: closed form from the step, resume at any step, layer-wise multipliers, Opacus'
DPOptimizer, and no "step() before optimizer.step()" warning when a GradScaler skips a step."""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import torch
from torch import nn

from distsched import schedules as S

#: one instance of every catalogue entry (keys are catalogue names)
EXAMPLES: dict[str, S.Schedule] = {
    "constant": S.Constant(0.1),
    "step": S.Step(0.1, step_size=30, gamma=0.5),
    "multistep": S.MultiStep(0.1, milestones=(50, 120), gamma=0.2),
    "exponential": S.Exponential(0.1, gamma=0.99),
    "inverse_time": S.InverseTime(0.1, decay_rate=0.05),
    "inverse_power": S.InversePower(0.1, power=0.75),
    "polynomial": S.Polynomial(0.1, total_steps=200, power=2.0, min_lr=1e-3),
    "linear": S.Linear(0.1, total_steps=100, start_factor=0.25),
    "inverse_sqrt": S.InverseSqrt(0.1, timescale=20),
    "cosine": S.Cosine(0.1, total_steps=250, min_lr=1e-3),
    "cosine_restarts": S.CosineRestarts(0.1, cycle_steps=10, cycle_mult=2, min_lr=1e-3, cycle_decay=0.8),
    "cyclic": S.Cyclic(0.1, step_size_up=20, min_lr=0.01, step_size_down=30, mode="triangular2"),
    "one_cycle": S.OneCycle(0.1, total_steps=250, three_phase=True),
    "wsd": S.WarmupStableDecay(0.1, total_steps=250, decay_steps=60, warmup_steps=20, decay="1-sqrt"),
    "warmup": S.Warmup(S.Cosine(0.1, 200), warmup_steps=25, start_factor=0.1, mode="exponential"),
    "join": S.Join((S.Constant(0.1), S.Exponential(0.05, 0.98)), (100,)),
    "scale": S.Scale(S.Cosine(0.1, 100), 0.5),
    "clamp": S.Clamp(S.Exponential(0.1, 0.95), min_lr=1e-3),
    "repeat": S.Repeat(S.Cosine(0.1, 40), 40),
    "phase_shift": S.PhaseShift(S.Cyclic(0.1, step_size_up=25), phase=0.5),
    "linear_beta": S.LinearBeta(total_steps=200),
    "cosine_beta": S.CosineBeta(total_steps=200),
    "diffusion_coupled": S.DiffusionCoupled(0.1, S.CosineBeta(total_steps=200)),
    "curriculum_spike": S.CurriculumSpike(
        (S.Constant(0.05), S.Constant(0.1), S.Cosine(0.05, 100)), boundaries=(60, 120), spike_lr=0.3, spike_steps=10
    ),
}


def test_examples_cover_the_catalogue():
    assert set(EXAMPLES) == set(S.CATALOGUE)
    for name, sched in EXAMPLES.items():
        assert type(sched) is S.CATALOGUE[name]


def _opt(groups: int = 2) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))]} for _ in range(groups)], lr=1.0)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_resume_from_state_dict_at_any_step_gives_identical_sequence(name):
    sched = EXAMPLES[name]
    mults = [1.0, 0.5]
    opt = _opt()
    a = S.ScheduledLR(opt, sched, multipliers=mults)
    full, states = [], {}
    for t in range(300):
        full.append(a.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == full[-1]
        states[t] = pickle.dumps(a.state_dict())
        opt.step()
        a.step()
    # closed form, never the recursive one: lr_g(t) = schedule(t) * m_g
    assert full == [[sched(t) * m for m in mults] for t in range(300)]
    for k in (0, 1, 99, 100, 137, 299):
        # a fresh process: a new optimizer, the schedule rebuilt from its spec, the pickled state
        opt2 = _opt()
        b = S.ScheduledLR(opt2, S.from_spec(S.to_spec(pickle.loads(pickle.dumps(sched)))), multipliers=[1.0, 1.0])
        b.load_state_dict(pickle.loads(states[k]))
        resumed = []
        for _ in range(k, 300):
            resumed.append([g["lr"] for g in opt2.param_groups])
            opt2.step()
            b.step()
        assert resumed == full[k:], f"resumed at {k}"


def test_state_is_the_step_and_outside_edits_do_not_leak():
    sched = S.Cosine(0.1, 100)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # base = peak: lr(t) = sched(t)
    lrs = S.ScheduledLR(opt, sched)
    for _ in range(10):
        opt.step()
        lrs.step()
    assert lrs.state_dict() == {"step": 10, "multipliers": [1.0]}
    assert lrs.step_count == 10
    opt.param_groups[0]["lr"] = 123.0  # a recursive scheduler would carry this forward
    opt.step()
    lrs.step()
    assert opt.param_groups[0]["lr"] == sched(11)
    lrs.step(epoch=57)  # jump
    assert opt.param_groups[0]["lr"] == sched(57)


def test_multipliers_from_param_groups_and_validation():
    opt = torch.optim.SGD(
        [
            {"params": [nn.Parameter(torch.zeros(1))], S.MULTIPLIER_KEY: 0.25},
            {"params": [nn.Parameter(torch.zeros(1))]},
        ],
        lr=0.1,
    )
    lrs = S.ScheduledLR(opt, S.Constant(0.2))
    assert lrs.get_last_lr() == [0.2 * 0.25, 0.2]
    with pytest.raises(ValueError, match="multipliers"):
        S.ScheduledLR(_opt(2), S.Constant(0.1), multipliers=[1.0])
    with pytest.raises(ValueError, match=r"multipliers\[1\]"):
        S.ScheduledLR(_opt(2), S.Constant(0.1), multipliers=[1.0, -0.5])
    with pytest.raises(ValueError, match="schedule"):
        S.ScheduledLR(_opt(2), 0.1)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def test_layerwise_groups_and_multipliers():
    torch.manual_seed(0)
    model = _net()
    alpha = 0.5
    groups = S.layerwise(model, alpha=alpha, weight_decay=0.0)
    # the three Linear layers (ReLU/Tanh have no parameters): l = 1, 2, 3 from input to output
    assert [g["name"] for g in groups] == ["0", "2", "4"]
    assert [g[S.MULTIPLIER_KEY] for g in groups] == [alpha**2, alpha**1, alpha**0]
    assert all(g["weight_decay"] == 0.0 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = torch.optim.SGD(groups, lr=1.0)
    sched = S.Cosine(0.1, 50)
    lrs = S.ScheduledLR(opt, sched)  # multipliers read from the groups
    for t in range(20):
        expected = [sched(t) * alpha ** (3 - l) for l in (1, 2, 3)]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected, rel=1e-15)
        opt.step()
        lrs.step()
    # multipliers may also be passed as the group dicts themselves
    lrs2 = S.ScheduledLR(torch.optim.SGD(S.layerwise(model, alpha=0.1), lr=1.0), sched, multipliers=groups)
    assert lrs2.multipliers == [alpha**2, alpha, 1.0]


def test_layerwise_custom_splitter_and_errors():
    model = _net()
    layers = [m for m in model if isinstance(m, nn.Linear)]

    def two_groups(m):
        return [("body", [*layers[0].parameters(), *layers[1].parameters()]), ("head", list(layers[2].parameters()))]

    groups = S.layerwise(model, alpha=0.3, splitter=two_groups)
    assert [(g["name"], g[S.MULTIPLIER_KEY]) for g in groups] == [("body", 0.3), ("head", 1.0)]
    with pytest.raises(ValueError, match="left trainable parameters out"):
        S.layerwise(model, alpha=0.3, splitter=lambda m: [("head", list(layers[2].parameters()))])
    with pytest.raises(ValueError, match="more than one group"):
        S.layerwise(model, alpha=0.3, splitter=lambda m: [("a", list(m.parameters())), ("b", list(m.parameters()))])
    with pytest.raises(ValueError, match="alpha"):
        S.layerwise(model, alpha=0.0)
    # parameters held by the model itself join the first group; frozen ones are left out
    model.scale = nn.Parameter(torch.ones(1))
    layers[2].bias.requires_grad_(False)
    groups = S.layerwise(model, alpha=0.5)
    assert groups[0]["params"][0] is model.scale
    assert all(p is not layers[2].bias for g in groups for p in g["params"])


@pytest.mark.filterwarnings("ignore:Secure RNG turned off")
def test_dp_optimizer_from_opacus_follows_the_schedule():
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    engine = PrivacyEngine(accountant="rdp")
    model, dp_opt, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(S.layerwise(model, alpha=0.5), lr=1.0),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    sched = S.Warmup(S.Cosine(0.2, 20), warmup_steps=3, start_factor=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lrs = S.ScheduledLR(dp_opt, sched)
        t = 0
        for _ in range(2):
            for xb, yb in loader:
                before = [p.detach().clone() for p in model.parameters()]
                dp_opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                dp_opt.step()
                # plain SGD: the DP-noised gradient times this step's scheduled lr, per layer group
                for group in dp_opt.param_groups:
                    assert group["lr"] == pytest.approx(sched(t) * group[S.MULTIPLIER_KEY], rel=1e-15)
                for p, b in zip(model.parameters(), before):
                    lr = next(g["lr"] for g in dp_opt.param_groups if any(q is p for q in g["params"]))
                    torch.testing.assert_close(p.detach(), b - lr * p.grad, rtol=1e-5, atol=1e-7)
                lrs.step()
                t += 1
    assert t == 8
    assert dp_opt.original_optimizer.param_groups[0]["lr"] == pytest.approx(sched(8) * 0.5, rel=1e-15)
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]
    assert engine.get_epsilon(1e-5) > 0


def _scheduler_warnings(make_scheduler, skip_with_scaler: bool) -> list[str]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = make_scheduler(opt)
        if skip_with_scaler:
            scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
            loss = model(torch.ones(2, 3)).sum() * math.inf  # inf gradients: the scaler skips optimizer.step()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            assert scaler.get_scale() < 2.0**16  # the step really was skipped
        sched.step()
        sched.step()
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("skip_with_scaler", [True, False])
def test_no_step_order_warning_when_optimizer_step_is_skipped(skip_with_scaler):
    if skip_with_scaler and not torch.amp.GradScaler("cpu").is_enabled():
        pytest.skip("GradScaler is disabled on this CPU build")
    ref = _scheduler_warnings(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10), skip_with_scaler)
    assert any("before `optimizer.step()`" in m for m in ref)  # torch's own scheduler warns
    ours = _scheduler_warnings(lambda o: S.ScheduledLR(o, S.Cosine(0.1, 10)), skip_with_scaler)
    assert ours == []
