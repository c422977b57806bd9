"""The worker loop on one worker against a plain torch loop (torch's own SGD and CosineAnnealingLR),
and its run folder."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from distsched import schedules as S
from distsched.data import ShardBatches, digits
from distsched.report import read_metrics
from distsched.train import LocalSession, config_from_mapping, prepare_run, train_worker
from distsched.train.checkpoint import latest_checkpoint, load_rank_state

STEPS = 120
CFG = {
    "name": "one",
    "seed": 5,
    "workers": 1,
    "steps": STEPS,
    "batch_size": 16,
    "log_every": 10,
    "model": {"name": "mlp", "hidden": [32]},
    "data": {"name": "digits", "partition": "iid"},
    "optimizer": {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS, "min_lr": 0.001},
    "sync": {"rule": "fixed", "h": 4},
    "checkpoint": {"every": 50, "keep": 2},
}


def _reference():
    """The same run written as a plain torch loop."""
    torch.manual_seed(CFG["seed"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=0.001)
    data = digits(0.2, CFG["seed"])
    x_all, y_all = data.train.tensors
    batches = iter(ShardBatches(torch.arange(len(y_all)).numpy(), 16, CFG["seed"], 0))
    lrs = []
    for _ in range(STEPS):
        idx = next(batches)
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
        opt.step()
        sched.step()
    return model, lrs


@pytest.fixture(scope="module")
def one_worker_run(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = config_from_mapping(CFG)
    folder, cfg = prepare_run(cfg, run_dir=tmp_path_factory.mktemp("run") / "one")
    session = LocalSession(folder.checkpoints, rank=0, world_size=1, keep=cfg.checkpoint.keep)
    summary = train_worker(cfg, folder.root, session)
    return folder, summary


def test_one_worker_matches_plain_torch_loop(one_worker_run):
    folder, summary = one_worker_run
    ref_model, ref_lrs = _reference()
    final = load_rank_state(latest_checkpoint(folder.checkpoints), 0)
    assert final["step"] == STEPS and final["finished"]
    ours = final["model"]
    for (name, p_ref) in ref_model.state_dict().items():
        torch.testing.assert_close(ours[name], p_ref, rtol=1e-5, atol=1e-6)
    records = read_metrics(folder.metrics_path)
    assert [r["step"] for r in records] == list(range(10, STEPS + 1, 10))
    for r in records:  # the LR used at step t = step - 1
        assert r["lr"] == pytest.approx(ref_lrs[r["step"] - 1], rel=1e-9, abs=1e-12)
    # with one worker there is nothing to send
    assert summary["bytes_sent"] == 0 and summary["steps_done"] == STEPS


def test_run_folder_contents(one_worker_run):
    folder, summary = one_worker_run
    assert (folder.root / "config.yaml").exists()
    assert config_from_mapping(folder.read_config()) == config_from_mapping(CFG)
    assert sorted(p.name for p in folder.plots.iterdir()) == ["loss.png", "lr.png", "period.png", "rounds.png"]
    saved = json.loads(folder.summary_path.read_text())
    assert saved == summary
    assert 0.8 < saved["test_accuracy"] <= 1.0  # digits with an MLP: well above chance (0.1)
    kept = sorted(p.name for p in folder.checkpoints.iterdir())
    assert kept == ["step_00000100", "step_00000120"]  # keep: 2


def test_qsr_holds_h_base_through_the_schedule_warmup(tmp_path):
    """A warmup from LR 0 must not make QSR's first round the whole run: the loop hands the schedule's
    warmup length to QSR, which keeps H = h_base while t < warmup_steps (Gu et al. 2024)."""
    from distsched.sync import QSR
    from distsched.train import SyncConfig

    warm, steps = 20, 100
    sync = {"rule": "qsr", "h_base": 2, "alpha": 0.2}
    rule = SyncConfig.from_spec(sync).build_rule(warmup_steps=warm)
    assert isinstance(rule, QSR) and rule.warmup_steps == warm
    assert SyncConfig.from_spec({**sync, "warmup_steps": 5}).build_rule(warmup_steps=warm).warmup_steps == 5

    torch.set_num_threads(1)
    cfg = config_from_mapping({
        **CFG, "steps": steps, "sync": sync,
        "schedule": {"name": "cosine", "lr": 0.2, "total_steps": steps, "warmup_steps": warm},
    })
    folder, cfg = prepare_run(cfg, run_dir=tmp_path / "warm")
    summary = train_worker(cfg, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1, keep=1))
    # closed form of the sync steps: H = 2 during warmup, then max(2, floor((0.2 / lr_t)^2)), cut at the end
    sched = S.warmup(S.cosine(lr=0.2, total_steps=steps), warmup_steps=warm)  # the cosine: the last 80 steps
    t, expected = 0, 0
    while t < steps:
        h = 2 if t < warm else max(2, int((0.2 / sched(t)) ** 2))
        t, expected = min(t + h, steps), expected + 1
    assert summary["sync_rounds"] == expected > warm // 2


def test_the_worker_takes_the_configs_typed_blocks(tmp_path):
    """The loop uses the config's blocks as loaded: the Schedule object itself (read once, at load; no
    second build from a dict), and its own fresh sync rule, controller and engine options from the typed
    SyncConfig / ControllerConfig."""
    from distsched.control import Controlled, ReduceOnPlateau
    from distsched.sync import QSR
    from distsched.train.loop import _build, _open

    cfg = config_from_mapping({**CFG, "sync": {"name": "qsr", "h_base": 2, "alpha": 0.1, "fragments": 2,
                                               "average_momentum": True},
                               "controller": {"name": "plateau", "factor": 0.5, "patience": 2}})
    folder, cfg = prepare_run(cfg, run_dir=tmp_path / "typed")
    run = _open(cfg, folder.root, LocalSession(folder.checkpoints, 0, 1), None, False)
    state, _ = _build(run)
    lr = state.engine.schedule
    assert isinstance(lr, Controlled) and lr.schedule is cfg.schedule and lr.controller is state.controller
    assert isinstance(state.controller, ReduceOnPlateau) and state.controller.reduce_factor == 0.5
    assert state.controller is not cfg.controller.build()  # each build is fresh: the config holds the spec
    assert isinstance(state.engine.rule, QSR) and (state.engine.rule.h_base, state.engine.rule.alpha) == (2, 0.1)
    assert (state.engine.fragments, state.engine.average_momentum) == (2, True)
