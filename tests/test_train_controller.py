"""The ``controller`` block in the real training loop: the plateau controller lowers the LR exactly when
torch's ReduceLROnPlateau, fed the same worker-averaged losses, does; ``lr`` in metrics.jsonl is the LR
applied; every checkpoint holds the controller state and a run resumed from a mid-run checkpoint equals
the uninterrupted one bit for bit (single process; two gloo processes in the slow test); the example
config on two local processes, with ``distsched diagnose`` on its run folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from distsched import cli
from distsched.analysis import VERDICTS
from distsched.report import read_metrics
from distsched.train import LocalSession, config_from_mapping, load_config, prepare_run, run_processes, train_worker
from distsched.train.checkpoint import complete_checkpoints, latest_checkpoint, load_rank_state
from distsched.train.controller import build_controller

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_plateau.yaml"
STEPS, LR, LOG_EVERY, RESUME_AT = 150, 0.2, 6, 80  # 80 % 6 != 0: the resumed run restores a partial window
BASE = {
    "name": "ctl",
    "seed": 2,
    "workers": 1,
    "steps": STEPS,
    "batch_size": 32,
    "log_every": LOG_EVERY,
    "model": {"name": "mlp", "hidden": [16]},
    # overlapping blobs: the loss stops improving well before the end at a constant LR
    "data": {"name": "synthetic", "samples": 512, "features": 8, "classes": 4, "noise": 3.0},
    "optimizer": {"name": "sgd"},
    "schedule": {"name": "constant", "lr": LR},
    "checkpoint": {"every": 40, "keep": 10},
}
COSINE = {"name": "cosine", "lr": LR, "total_steps": STEPS, "min_lr": 0.01}
CASES = {
    "plateau": {"controller": {"name": "plateau", "factor": 0.5, "patience": 2}},
    "pid": {"controller": {"name": "pid", "kp": 2.0, "kd": 0.5, "smoothing": 0.3, "relative": True,
                           "min_factor": 0.1}, "schedule": COSINE},
    "warm_restart": {"controller": {"name": "warm_restart", "patience": 2, "restart_decay": 0.7}, "schedule": COSINE},
    "curriculum": {"controller": {"name": "curriculum", "phase_factors": [1.0, 0.5, 0.25], "spike_factor": 2.0,
                                  "spike_steps": 6, "patience": 2}},
    # local SGD with H = 4 and LR compensation min(1, (h_ref / H)^p) = (1/4)^0.5 = 0.5 on top
    "compensated": {"controller": {"name": "plateau", "factor": 0.5, "patience": 2},
                    "sync": {"rule": "fixed", "h": 4, "lr_compensation": {"h_ref": 1, "power": 0.5}}},
}
CONTROLLER_CASES = ["plateau", "pid", "warm_restart", "curriculum"]


def _train(root: Path, mapping: dict):
    cfg = config_from_mapping(mapping)
    folder, cfg = prepare_run(cfg, run_dir=root)
    summary = train_worker(cfg, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1, keep=10))
    return folder, summary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted single-worker run per case, made on first use. The PNGs are skipped in this
    module's in-process runs (three quarters of a run's time here; tests/test_train_loop.py checks them)."""
    torch.set_num_threads(1)
    done: dict = {}
    patch = pytest.MonkeyPatch()
    patch.setattr("distsched.train.loop.write_plots", lambda folder: [])

    def get(name: str):
        if name not in done:
            done[name] = _train(tmp_path_factory.mktemp(name) / "run", {**BASE, **CASES[name]})
        return done[name]

    yield get
    patch.undo()


def _torch_plateau_lrs(losses, lr, factor, patience, min_lr=0.0):
    """torch's ReduceLROnPlateau fed ``losses``: the LR in force before each one is fed."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=factor, patience=patience,
                                                       threshold=1e-4, threshold_mode="rel", min_lr=min_lr)
    out = []
    for loss in losses:
        out.append(opt.param_groups[0]["lr"])
        sched.step(loss)
    return out, opt.param_groups[0]["lr"]


def _plain_torch_plateau_run():
    """BASE + the plateau case written as a plain torch loop: SGD and torch's ReduceLROnPlateau stepped
    with the mean loss of each ``LOG_EVERY`` steps, before the next step's LR is used."""
    from torch import nn

    from distsched.data import ShardBatches

    cfg = config_from_mapping({**BASE, **CASES["plateau"]})
    data = cfg.data.load(cfg.seed)
    shard = cfg.data.shards(data.targets, 1, cfg.batch_size, cfg.seed)[0]
    x_all, y_all = data.train.tensors
    torch.manual_seed(cfg.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2, threshold=1e-4)
    batches, window = iter(ShardBatches(shard, cfg.batch_size, cfg.seed, 0)), []
    for t in range(STEPS):
        idx = next(batches)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        if (t + 1) % LOG_EVERY == 0:
            plateau.step(sum(window) / len(window))
            window = []
    return model, opt.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "block, needle",
    [
        ({"name": "plateau", "factor": 1.5}, "controller.factor must be in (0.0, 1.0)"),
        ({"name": "plateau", "patiense": 3}, "unknown key controller.patiense for controller 'plateau'"),
        ({"name": "plateau", "mode": "max"}, "unknown key controller.mode"),  # the signal is a loss
        ({"name": "pid", "kp": "big"}, "controller.kp must be a finite number, got 'big'"),
        ({"name": "pid", "relative": "yes"}, "controller.relative: expected true or false"),
        ({"name": "curriculum"}, "missing required key controller.phase_factors"),
        ({"name": "cosine_please"}, "unknown controller 'cosine_please' in controller.name"),
        ({"factor": 0.5}, "controller needs a 'name' key"),
        ({"name": "gradient_conflict"}, "needs per-task gradients"),
        ("plateau", "controller: expected a mapping"),
    ],
)
def test_bad_controller_block_is_one_line_exit_2(tmp_path, capsys, block, needle):
    with pytest.raises(ValueError, match="controller"):
        config_from_mapping({**BASE, "controller": block})
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps({**BASE, "controller": block}), encoding="utf-8")  # JSON is YAML
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_controller_block_builds_the_controller_it_names():
    from distsched.control import CurriculumPhases, PIDController, ReduceOnPlateau, WarmRestartOnPlateau

    kinds = {"plateau": ReduceOnPlateau, "pid": PIDController, "warm_restart": WarmRestartOnPlateau,
             "curriculum": CurriculumPhases}
    for name in CONTROLLER_CASES:
        assert type(build_controller(CASES[name]["controller"])) is kinds[name]
    ctl = build_controller({"name": "plateau", "factor": 0.3, "patience": 7, "cooldown": 2})
    assert (ctl.reduce_factor, ctl.patience, ctl.cooldown, ctl.mode) == (0.3, 7, 2, "min")
    assert build_controller(None) is None and config_from_mapping(BASE).controller is None


# ---------------------------------------------------------------------------------------- behaviour
def test_plateau_lowers_the_lr_like_torch_reduce_lr_on_plateau(runs):
    folder, summary = runs("plateau")
    records = read_metrics(folder.metrics_path)
    assert [r["step"] for r in records] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    losses = [r["loss"] for r in records]  # the worker-averaged window losses the controller was fed
    ref, final_lr = _torch_plateau_lrs(losses, LR, factor=0.5, patience=2)
    assert final_lr <= LR / 4  # the loss stalled: torch cuts the LR at least twice on this sequence
    for r, lr in zip(records, ref):  # the LR applied during the record's last step
        assert r["lr"] == pytest.approx(lr, rel=1e-12)
        assert r["controller_factor"] == pytest.approx(lr / LR, rel=1e-12)
    # no cut before the loss stopped improving: the first cut follows patience + 1 records without a new best
    first = next(i for i, r in enumerate(records) if r["lr"] < LR)
    best_before = min(losses[: first - 3])
    assert all(x >= best_before * (1 - 1e-4) for x in losses[first - 3: first])
    # the state after the last record (saved in the final checkpoint) is torch's, and so is the optimizer's LR
    final = load_rank_state(latest_checkpoint(folder.checkpoints), 0)
    assert final["step"] == STEPS and final["finished"]
    assert final["controller"]["factor"] == pytest.approx(final_lr / LR, rel=1e-12)
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(final_lr, rel=1e-12)
    # and the whole run is the plain torch loop's: a cut applied one step late would move the parameters
    ref_model, ref_lr = _plain_torch_plateau_run()
    assert ref_lr == pytest.approx(final_lr, rel=1e-12)
    for name, p_ref in ref_model.state_dict().items():
        torch.testing.assert_close(final["model"][name], p_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["pid", "curriculum", "warm_restart", "compensated"])
def test_metrics_lr_is_the_schedule_times_the_controller(runs, name):
    """``lr = schedule(t) x controller_factor (x LR compensation)``, the schedule read independently."""
    from distsched.schedules import from_spec

    folder, _ = runs(name)
    sched = from_spec({**BASE, **CASES[name]}["schedule"])
    comp = 0.5 if name == "compensated" else 1.0
    records = read_metrics(folder.metrics_path)
    state = load_rank_state(latest_checkpoint(folder.checkpoints), 0)["controller"]
    if name == "warm_restart":  # after the last restart the schedule is read from the restart step
        assert state["restarts"] >= 1
        start = state["restart_step"]
        after = [r for r in records if r["step"] - 1 >= start]
        assert after and all(r["controller_factor"] == pytest.approx(0.7 ** state["restarts"]) for r in after)
        for r in after:
            assert r["lr"] == pytest.approx(sched(r["step"] - 1 - start) * r["controller_factor"], rel=1e-12)
        return
    assert len({r["controller_factor"] for r in records}) > 1  # the controller acted
    for r in records:
        assert r["lr"] == pytest.approx(sched(r["step"] - 1) * r["controller_factor"] * comp, rel=1e-12)


@pytest.mark.parametrize("name", CONTROLLER_CASES)
def test_interrupted_run_equals_uninterrupted(runs, name, tmp_path):
    folder, summary = runs(name)
    copy = tmp_path / "interrupted"
    shutil.copytree(folder.root, copy)
    for step, ck in complete_checkpoints(copy / "checkpoints"):
        if step > RESUME_AT:  # as if the run had died after step RESUME_AT's checkpoint
            shutil.rmtree(ck)
    (copy / "summary.json").unlink()
    mid = load_rank_state(latest_checkpoint(copy / "checkpoints"), 0)
    assert mid["step"] == RESUME_AT
    # the saved state is not a fresh controller's: a resume that dropped it would take other steps
    assert mid["controller"] != build_controller(CASES[name]["controller"]).state_dict()
    again, resumed = _train(copy, {**BASE, **CASES[name]})
    assert resumed["resumed_from_step"] == RESUME_AT and resumed["steps_done"] == STEPS
    ours = load_rank_state(latest_checkpoint(copy / "checkpoints"), 0)
    ref = load_rank_state(latest_checkpoint(folder.checkpoints), 0)
    for k, v in ref["model"].items():
        assert torch.equal(ours["model"][k], v), k
    assert ours["controller"] == ref["controller"]
    assert ours["optimizer"]["param_groups"][0]["lr"] == ref["optimizer"]["param_groups"][0]["lr"]

    def strip(rs):
        return [{k: v for k, v in r.items() if k != "time_s"} for r in rs]

    assert strip(read_metrics(again.metrics_path)) == strip(read_metrics(folder.metrics_path))  # no step twice
    assert resumed["final_loss"] == summary["final_loss"] and resumed["test_loss"] == summary["test_loss"]


def test_resume_refuses_a_checkpoint_of_another_controller_setting(runs, tmp_path):
    folder, _ = runs("plateau")
    copy = tmp_path / "other"
    shutil.copytree(folder.root, copy)
    cfg = config_from_mapping(BASE)  # the same run without a controller block
    with pytest.raises(ValueError, match="holds controller state, the config has no controller block"):
        train_worker(cfg, copy, LocalSession(copy / "checkpoints", rank=0, world_size=1))


# ---------------------------------------------------------------------------------------- the example
@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    cfg = load_config(EXAMPLE)
    folder, cfg = prepare_run(cfg, run_dir=tmp_path_factory.mktemp("example") / "run")
    return folder, cfg, run_processes(cfg, folder)


def test_example_two_workers_share_the_controller_and_qsr_reads_it(example_run):
    folder, cfg, summary = example_run
    assert cfg.workers == 2 and summary["steps_done"] == cfg.steps and summary["test_accuracy"] >= 0.9
    records = read_metrics(folder.metrics_path)
    ctl = cfg.controller.params
    base = cfg.schedule.lr
    ref, final_lr = _torch_plateau_lrs([r["loss"] for r in records], base, ctl["factor"], ctl["patience"],
                                       min_lr=base * ctl["min_factor"])
    assert final_lr < base
    for r, lr in zip(records, ref):
        assert r["lr"] == pytest.approx(lr, rel=1e-12)
    last = latest_checkpoint(folder.checkpoints)
    states = [load_rank_state(last, r) for r in range(2)]
    assert states[0]["controller"] == states[1]["controller"]  # same decisions on both ranks
    assert states[0]["optimizer"]["param_groups"][0]["lr"] == states[1]["optimizer"]["param_groups"][0]["lr"]
    # QSR, H = max(2, floor((alpha / lr)^2)), reads the controlled LR: H = 2 at the base LR, the cap once cut
    assert records[0]["H"] == 2 and max(r["H"] for r in records) == 32
    assert summary["sync_rounds"] < cfg.steps // 2


def test_diagnose_reads_the_example_run_folder(example_run, capsys):
    folder, _, _ = example_run
    assert cli.main(["diagnose", str(folder.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"] == str(folder.metrics_path)
    assert out["verdict"] in VERDICTS
    assert any("lr='lr'" in e and "train='loss'" in e for e in out["evidence"]), out["evidence"]


@pytest.mark.slow  # two more gloo spawns; test_interrupted_run_equals_uninterrupted covers the same path in-process
def test_example_two_workers_resumed_equals_uninterrupted(example_run, tmp_path):
    folder, cfg, _ = example_run
    copy = tmp_path / "resumed"
    shutil.copytree(folder.root, copy)
    for step, ck in complete_checkpoints(copy / "checkpoints"):
        if step > 200:
            shutil.rmtree(ck)
    (copy / "summary.json").unlink()
    again, _ = prepare_run(resume=copy)
    summary = run_processes(cfg, again)
    assert summary["resumed_from_step"] == 200 and summary["steps_done"] == cfg.steps
    for rank in range(2):
        ours = load_rank_state(latest_checkpoint(copy / "checkpoints"), rank)
        ref = load_rank_state(latest_checkpoint(folder.checkpoints), rank)
        assert ours["controller"] == ref["controller"]
        for k, v in ref["model"].items():
            assert torch.equal(ours["model"][k], v), (rank, k)
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(folder.metrics_path)]
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(again.metrics_path)] == strip
