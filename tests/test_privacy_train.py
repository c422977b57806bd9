"""The ``privacy`` block in the real training loop: the run stops at the budget with a checkpoint, the
accountant history is in every checkpoint, a resumed run cannot reset the budget and equals the
uninterrupted run; the same with 2 gloo processes (DP-SGD for the group), killed and resumed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from opacus.accountants import RDPAccountant

from distsched.data import digits
from distsched.report import read_metrics
from distsched.train import FaultInjection, LocalSession, config_from_mapping, prepare_run, run_processes, train_worker
from distsched.train.checkpoint import checkpoint_name, complete_checkpoints, latest_checkpoint, load_rank_state

TARGET, SIGMA, DELTA = 1.0, 1.5, 1e-5
CFG = {
    "name": "dp",
    "seed": 3,
    "workers": 1,
    "steps": 400,
    "batch_size": 32,
    "log_every": 20,
    "model": {"name": "mlp", "hidden": [32]},
    "data": {"name": "digits"},
    "optimizer": {"name": "sgd"},
    "schedule": {"name": "constant", "lr": 0.5},
    "sync": {"rule": "fixed", "h": 1},
    "checkpoint": {"every": 50, "keep": 2},
    "privacy": {"target_epsilon": TARGET, "noise_multiplier": SIGMA, "delta": DELTA, "lr_coupling": True,
                "min_lr_factor": 0.2, "reproducible": True},  # bit-identical resumes hold in reproducible mode only
}


def _eps(sigma, q, n):
    acc = RDPAccountant()
    acc.history = [(sigma, q, n)]
    return acc.get_epsilon(delta=DELTA)


def _run_one(root, mapping=CFG):
    """A new run in ``root``; or, when ``root`` holds a run, its resume from its ``config.yaml``, first
    overwritten with ``mapping`` when one is given (as a user editing the run's config would)."""
    root = Path(root)
    if (root / "config.yaml").exists():
        if mapping is not CFG:
            (root / "config.yaml").write_text(yaml.safe_dump(mapping))
        folder, cfg = prepare_run(resume=root)
    else:
        folder, cfg = prepare_run(config_from_mapping(mapping), run_dir=root)
    return folder, train_worker(cfg, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1))


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    torch.set_num_threads(1)
    return _run_one(tmp_path_factory.mktemp("dp1") / "run")


def test_single_worker_stops_at_the_budget_with_a_checkpoint(one_worker):
    folder, summary = one_worker
    q = 32 / len(digits(0.2, CFG["seed"]).train)
    n = summary["steps_done"]
    assert summary["stopped_by_budget"] and 0 < n < CFG["steps"]
    assert _eps(SIGMA, q, n) <= TARGET < _eps(SIGMA, q, n + 1)  # the next step would have exceeded it
    last = latest_checkpoint(folder.checkpoints)
    assert last.name == checkpoint_name(n)
    state = load_rank_state(last, 0)
    assert state["finished"] and state["step"] == n
    assert state["privacy"]["accountant"]["history"] == [[SIGMA, q, n]]
    # every checkpoint holds the history up to its step
    for step, ck in complete_checkpoints(folder.checkpoints):
        assert load_rank_state(ck, 0)["privacy"]["accountant"]["history"] == [[SIGMA, q, step]]
    assert summary["epsilon"] == pytest.approx(_eps(SIGMA, q, n), rel=1e-12)
    # epsilon over steps is logged and plotted; the LR carries the noise-aware factor
    records = read_metrics(folder.metrics_path)
    assert records[-1]["step"] == n and records[-1]["epsilon"] == pytest.approx(summary["epsilon"], rel=1e-12)
    for r in records:
        assert r["epsilon"] == pytest.approx(_eps(SIGMA, q, r["step"]), rel=1e-12)
        assert 0.2 * 0.5 - 1e-12 <= r["lr"] <= 0.5 + 1e-12
        assert r["not_private"] == ["loss"]  # the raw loss is marked as never privatized
    assert (folder.plots / "epsilon.png").exists()
    assert summary["private"] is False  # reproducible: true


def test_resume_cannot_reset_the_budget(one_worker, tmp_path):
    folder, summary = one_worker
    copy = tmp_path / "again"
    shutil.copytree(folder.root, copy)
    # resuming the finished run with its own config takes no step
    _, again = _run_one(copy)
    assert again["steps_done"] == summary["steps_done"] and again["stopped_by_budget"]
    assert again["epsilon"] == summary["epsilon"]
    # a config that raises or drops the budget, or changes the accountant, is refused (it ran on before)
    privacy = CFG["privacy"]
    dropped = {k: v for k, v in privacy.items() if k != "target_epsilon"}
    for changed, match in [({**privacy, "target_epsilon": 50.0}, "privacy.target_epsilon: .*cannot raise"),
                           (dropped, "privacy.target_epsilon: .*cannot drop"),
                           ({**privacy, "accountant": "prv"}, "privacy.accountant")]:
        with pytest.raises(ValueError, match=match):
            _run_one(copy, {**CFG, "privacy": changed})
    no_dp = {k: v for k, v in CFG.items() if k != "privacy"}  # resuming without DP at all: refused too
    with pytest.raises(ValueError, match="privacy: the checkpoint .* holds privacy state, the config has no privacy"):
        _run_one(copy, no_dp)
    state = load_rank_state(latest_checkpoint(copy / "checkpoints"), 0)
    assert state["privacy"]["guard"]["target_epsilon"] == TARGET
    assert state["privacy"]["accountant"]["history"][0][2] == summary["steps_done"]
    assert state["privacy"]["mode"] == "single"


def test_resume_cannot_flip_reproducible_or_change_delta(one_worker, tmp_path):
    """A run seeded from its config (not private) resumed with secret noise would report ``private: true``
    for a model whose earlier noise anyone with config.yaml can replay: refused, by the driver
    (prepare_run) and by the worker's own load; so is a changed delta. Nothing of the run is rewritten."""
    folder, summary = one_worker
    copy = tmp_path / "flip"
    shutil.copytree(folder.root, copy)
    for key, value in [("reproducible", False), ("delta", DELTA / 10)]:
        changed = {**CFG, "privacy": {**CFG["privacy"], key: value}}
        with pytest.raises(ValueError, match=f"privacy.{key}: the run was started with"):
            _run_one(copy, changed)
        with pytest.raises(ValueError, match=f"privacy.{key}: the run was started with"):  # the worker's check
            train_worker(config_from_mapping(changed), copy, LocalSession(copy / "checkpoints", rank=0, world_size=1))
    assert (copy / "summary.json").read_text() == (folder.root / "summary.json").read_text()
    assert (copy / "metrics.jsonl").read_text() == (folder.root / "metrics.jsonl").read_text()


def test_interrupted_run_equals_uninterrupted(one_worker, tmp_path):
    folder, summary = one_worker
    copy = tmp_path / "interrupted"
    shutil.copytree(folder.root, copy)
    (mid_step, _), (last_step, last_dir) = complete_checkpoints(copy / "checkpoints")[-2:]
    shutil.rmtree(last_dir)  # as if the run had died after the checkpoint before the last
    (copy / "summary.json").unlink()
    _, resumed = _run_one(copy)
    assert resumed["resumed_from_step"] == mid_step and resumed["steps_done"] == last_step
    ours = load_rank_state(latest_checkpoint(copy / "checkpoints"), 0)
    ref = load_rank_state(latest_checkpoint(folder.checkpoints), 0)
    for k, v in ref["model"].items():
        torch.testing.assert_close(ours["model"][k], v, rtol=0, atol=0)
    assert ours["privacy"]["accountant"] == ref["privacy"]["accountant"]
    assert ours["privacy"]["noise"] == ref["privacy"]["noise"]
    assert torch.equal(ours["privacy"]["noise_rng"], ref["privacy"]["noise_rng"])


@pytest.mark.slow  # ~80 s on 2 cores (3 spawns); covered faster by the single-worker tests above and by
# tests/test_privacy_distributed.py (group DP-SGD, guard across ranks, restore on 2 gloo processes)
def test_two_workers_group_dp_killed_resumed_and_finished(tmp_path):
    mapping = {**CFG, "workers": 2, "batch_size": 16, "checkpoint": {"every": 40, "keep": 3},
               "privacy": {"target_epsilon": TARGET, "noise_multiplier": SIGMA, "delta": DELTA}}
    cfg = config_from_mapping(mapping)
    folder, cfg = prepare_run(cfg, run_dir=tmp_path / "dp2")
    with pytest.raises(Exception, match="terminated|exited|signal"):  # noqa: B017 - the kill ends the job
        run_processes(cfg, folder, fault=FaultInjection(rank=1, step=60, marker=str(tmp_path / "killed")))
    assert latest_checkpoint(folder.checkpoints).name == checkpoint_name(40)
    summary = run_processes(cfg, folder)  # resumes from step 40
    n = summary["steps_done"]
    q = 2 * 16 / len(digits(0.2, cfg.seed).train)  # group mode: q = W B / N on every shard
    assert summary["privacy_mode"] == "group" and summary["stopped_by_budget"]
    assert summary["resumed_from_step"] == 40
    assert _eps(SIGMA, q, n) <= TARGET < _eps(SIGMA, q, n + 1)
    last = latest_checkpoint(folder.checkpoints)
    assert last.name == checkpoint_name(n)
    states = [load_rank_state(last, r) for r in range(2)]
    for s in states:
        assert s["privacy"]["accountant"]["history"] == [[SIGMA, q, n]]
    for k, v in states[0]["model"].items():  # one noisy update for the whole group: identical replicas
        torch.testing.assert_close(states[1]["model"][k], v, rtol=0, atol=0)
    again = run_processes(cfg, folder)  # a finished run, resumed: not one more step
    assert again["steps_done"] == n and again["epsilon"] == summary["epsilon"]


def test_dp_example_config_loads_and_plans():
    from pathlib import Path

    from distsched.privacy import plan, privacy_config
    from distsched.train import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "digits_dp.yaml")
    p = privacy_config(cfg.privacy)
    q = cfg.workers * cfg.batch_size / len(digits(0.2, cfg.seed).train)
    planned = plan(target_epsilon=p.target_epsilon, delta=p.delta, sample_rate=q, steps=cfg.steps,
                   noise_schedule=p.noise_schedule)
    assert p.target_epsilon - 1e-3 <= _eps_history(planned.history()) <= p.target_epsilon


def _eps_history(history):
    acc = RDPAccountant()
    acc.history = [tuple(s) for s in history]
    return acc.get_epsilon(delta=DELTA)


@pytest.mark.slow  # ~40 s (one 2-process spawn); the accounting rule is covered fast in test_privacy_distributed.py
def test_two_workers_local_dp_unequal_shards(tmp_path):

    mapping = {**CFG, "workers": 2, "steps": 120, "data": {"name": "digits", "partition": "label_skew", "alpha": 0.5},
               "sync": {"rule": "fixed", "h": 4}, "checkpoint": {"every": 60, "keep": 2},
               "privacy": {"target_epsilon": 2.0, "delta": DELTA, "noise_schedule": "linear:ratio=0.5"}}
    cfg = config_from_mapping(mapping)
    folder, cfg = prepare_run(cfg, run_dir=tmp_path / "local")
    summary = run_processes(cfg, folder)
    assert summary["privacy_mode"] == "local" and summary["steps_done"] == 120
    shards = cfg.data.shards(cfg.data.load(cfg.seed).targets, 2, cfg.batch_size, cfg.seed)
    last = latest_checkpoint(folder.checkpoints)
    hists = [load_rank_state(last, r)["privacy"]["accountant"]["history"] for r in range(2)]
    for r, hist in enumerate(hists):  # each worker charged its own q_k = B / N_k, with the same noise schedule
        assert {h[1] for h in hist} == {32 / len(shards[r])}
        assert [h[0] for h in hist] == [h[0] for h in hists[0]] and [h[2] for h in hist] == [h[2] for h in hists[0]]
    run_eps = max(_eps_history(h) for h in hists)
    assert summary["epsilon"] == pytest.approx(run_eps, rel=1e-12)
    assert 2.0 - 1e-3 <= run_eps <= 2.0  # planned for the worker with the largest q_k
    # config.yaml edited to leave local mode (group, or one worker: rank 0's accountant alone would be carried
    # on, not the max over the shards): refused before any worker starts, naming privacy.mode
    for edit in ({"sync": {"rule": "fixed", "h": 1}, "privacy": {**mapping["privacy"], "mode": "group"}},
                 {"workers": 1, "privacy": {**mapping["privacy"], "mode": "group"}}):
        (folder.root / "config.yaml").write_text(yaml.safe_dump({**mapping, **edit}))
        with pytest.raises(ValueError, match="privacy.mode: the run was started in local mode"):
            prepare_run(resume=folder.root)


def test_budget_stop_right_after_a_resume_logs_like_the_uninterrupted_run(tmp_path):
    """Resumed from a checkpoint in the middle of a logging window, a run whose budget ends exactly there
    stops at once; its last record (loss window, lr, H, sigma of the last step) equals the record of a run
    that was never interrupted."""
    torch.set_num_threads(1)
    n = len(digits(0.2, CFG["seed"]).train)
    target = (_eps(SIGMA, 32 / n, 30) + _eps(SIGMA, 32 / n, 31)) / 2  # allows 30 steps, not 31
    base = {**CFG, "steps": 40, "checkpoint": {"every": 15, "keep": 5},
            "privacy": {"noise_multiplier": SIGMA, "delta": DELTA, "reproducible": True}}
    budget = {**base, "privacy": {**base["privacy"], "target_epsilon": target}}
    _, straight = _run_one(tmp_path / "straight", budget)
    assert straight["stopped_by_budget"] and straight["steps_done"] == 30

    free, _ = _run_one(tmp_path / "free", base)  # no budget: runs all 40 steps, checkpoints at 15 and 30
    for step, ck in complete_checkpoints(free.checkpoints):
        if step > 30:
            shutil.rmtree(ck)
    (free.root / "summary.json").unlink()
    _, resumed = _run_one(free.root, budget)  # resumes at 30 with 10 steps in the window, stops at once
    assert resumed["resumed_from_step"] == 30 and resumed["stopped_by_budget"] and resumed["steps_done"] == 30

    def records(root):
        return [{k: v for k, v in r.items() if k != "time_s"} for r in read_metrics(root / "metrics.jsonl")]

    assert records(free.root) == records(tmp_path / "straight")
    assert records(free.root)[-1]["step"] == 30 and records(free.root)[-1]["sigma"] == SIGMA
