"""Elastic training, resize on resume (issue 14, item 4): the world-size LR rule, deterministic
re-sharding of the data position, a W-rank checkpoint restored at W' ranks (averaged on load), and a
2-worker run resumed at 1 worker from the CLI, with its LR (closed form of the schedule x the rule) and,
with DP in group mode, its accounting (a real Opacus accountant fed the two segments by hand)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from distsched.cli import main
from distsched.train import config_from_mapping
from distsched.train.checkpoint import checkpoint_name, load_rank_state, read_meta
from distsched.train.resize import (
    average_tree,
    check_resizable,
    resharded_position,
    resize_rank_state,
    world_lr_factor,
)
from distsched.train.run import prepare_run


def test_world_lr_factor_closed_forms() -> None:
    assert world_lr_factor("none", 1, 4) == 1.0
    assert world_lr_factor("linear", 1, 4) == 0.25 and world_lr_factor("linear", 6, 4) == 1.5
    assert world_lr_factor("sqrt", 1, 4) == 0.5 and world_lr_factor("sqrt", 8, 2) == 2.0
    with pytest.raises(ValueError, match="world_lr must be one of"):
        world_lr_factor("cubic", 1, 2)
    with pytest.raises(ValueError, match="world_lr must be one of"):
        config_from_mapping({"schedule": {"name": "constant", "lr": 0.1}, "steps": 2, "world_lr": "cubic"})


def test_resharded_position_keeps_the_epoch_fraction() -> None:
    assert resharded_position(3, 5, 10, 20) == {"epoch": 3, "batch": 10}  # half an epoch stays half
    assert resharded_position(0, 9, 10, 4) == {"epoch": 0, "batch": 4} or resharded_position(0, 9, 10, 4) == {
        "epoch": 1, "batch": 0}
    assert resharded_position(2, 0, 10, 7) == {"epoch": 2, "batch": 0}
    assert resharded_position(1, 7, 8, 3) == {"epoch": 2, "batch": 0}  # round(2.625) = 3 = a full epoch


def test_average_tree_is_the_elementwise_mean_and_keeps_integers() -> None:
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "n": torch.tensor(7), "s": [torch.randn(2, generator=g), 5]}
    b = {"w": torch.randn(3, 4, generator=g), "n": torch.tensor(9), "s": [torch.randn(2, generator=g), 6]}
    m = average_tree([a, b])
    assert torch.allclose(m["w"], (a["w"] + b["w"]) / 2) and torch.allclose(m["s"][0], (a["s"][0] + b["s"][0]) / 2)
    assert int(m["n"]) == 7 and m["s"][1] == 5


def test_resize_refuses_exchanges_in_flight() -> None:
    state = {"world_size": 2, "model": {}, "optimizer": {"state": {}}, "sampler": {"step": 3}, "window": (0.0, 0),
             "engine": {"pending": [{"apply_at": 5, "totals": []}]}}
    with pytest.raises(ValueError, match="in flight"):
        resize_rank_state([state, state], 1, 0)


STEPS = 8
BASE = {
    "name": "el", "seed": 3, "workers": 2, "steps": STEPS, "batch_size": 16, "log_every": 1,
    "model": {"name": "mlp", "hidden": [8]}, "data": {"name": "digits"},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS},
    "checkpoint": {"every": 4, "keep": 5},
}


def _dp(workers: int, mode: str, h: int) -> dict:
    return dict(BASE, workers=workers, sync={"name": "fixed", "h": h},
                privacy={"noise_multiplier": 1.0, "delta": 1e-5, "mode": mode})


@pytest.mark.parametrize(("mode", "h", "old", "new", "refused"), [
    ("local", 4, 2, 1, True),   # leaving local mode: which shard's accountant would the one worker keep?
    ("auto", 4, 1, 2, True),    # entering it (auto without a sync every step): one accountant for two shards
    ("local", 4, 2, 3, True),   # the shards, hence their sample rates, change
    ("auto", 1, 2, 3, False),   # group mode: one accountant for the group, whatever its size
    ("group", 1, 2, 1, False),  # group -> single: the same accountant
    ("local", 4, 2, 2, False),  # no resize
])
def test_check_resizable_refuses_local_mode_before_or_after(mode: str, h: int, old: int, new: int,
                                                            refused: bool) -> None:
    cfg = config_from_mapping(_dp(old, mode, h))
    if refused:
        with pytest.raises(ValueError, match=f"local mode .* from {old} to {new} workers"):
            check_resizable(cfg, old, new)
    else:
        check_resizable(cfg, old, new)
    check_resizable(config_from_mapping(dict(BASE, workers=old, sync={"name": "fixed", "h": h})), old, new)


def test_resize_into_local_mode_is_refused_before_config_yaml_is_touched(tmp_path: Path) -> None:
    # a one-worker DP run (single mode) resumed at two workers without a sync every step (local mode): was
    # refused only by the workers, after config.yaml had been rewritten at the new size
    import yaml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(_dp(1, "auto", 4)))
    before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match="local mode"):
        prepare_run(resume=run, workers=2)
    assert (run / "config.yaml").read_text() == before


def _run_then_resize(tmp_path: Path, cfg: dict, workers: int) -> Path:
    """A 2-worker run to the end, rolled back to its step-4 checkpoint, resumed at ``workers``."""
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", str(path), "--launcher", "processes", "--run-dir", str(run), "--no-progress"]) == 0
    shutil.rmtree(run / "checkpoints" / checkpoint_name(STEPS))
    (run / "summary.json").unlink()
    states = [load_rank_state(run / "checkpoints" / checkpoint_name(4), r) for r in range(2)]
    torch.save(states, tmp_path / "step4.pt")
    assert main(["train", "--resume", str(run), "--workers", str(workers), "--launcher", "processes",
                 "--no-progress"]) == 0
    return run


def _records(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in ln]


@pytest.mark.slow  # two CLI runs with spawned workers; the fast cover: the in-process test below
def test_resume_at_one_worker_averages_and_rescales_the_lr(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = dict(BASE, sync={"rule": "fixed", "h": 3}, world_lr="linear")  # step 4 is mid-round: models differ
    run = _run_then_resize(tmp_path, cfg, workers=1)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resized_from_workers"] == 2 and summary["resumed_from_step"] == 4
    assert summary["steps_done"] == STEPS and summary["workers"] == 1
    assert config_from_mapping(__import__("yaml").safe_load((run / "config.yaml").read_text())).workers == 1
    # LR: cosine(t) before the resize, cosine(t) x W/W0 = x 1/2 after (the schedule's closed form)
    lr = {r["step"]: r["lr"] for r in _records(run)}
    for t in range(STEPS):
        expect = 0.1 * 0.5 * (1 + math.cos(math.pi * t / STEPS)) * (0.5 if t >= 4 else 1.0)
        assert lr[t + 1] == pytest.approx(expect, rel=1e-9), t
    end = run / "checkpoints" / checkpoint_name(STEPS)
    assert read_meta(end)["world_size"] == 1
    final = load_rank_state(end, 0)
    assert final["world_size"] == 1 and final["base_world"] == 2
    # the averaged start: the two ranks differ at step 4 (mid-round) and the resumed model is their mean
    old = torch.load(tmp_path / "step4.pt", weights_only=True)
    k = next(iter(old[0]["model"]))
    assert not torch.equal(old[0]["model"][k], old[1]["model"][k])
    started = resize_rank_state(old, 1, 0)["model"]
    assert torch.allclose(started[k], (old[0]["model"][k] + old[1]["model"][k]) / 2)


@pytest.mark.slow  # two CLI runs with spawned workers; the accounting's fast cover: tests of the accountant
def test_dp_group_resize_charges_a_new_segment(tmp_path: Path) -> None:
    from opacus.accountants import RDPAccountant

    from distsched.data import make_shards  # noqa: F401  (the shards come from the config, below)

    torch.set_num_threads(1)
    sigma, delta = 1.1, 1e-5
    cfg = dict(BASE, sync={"rule": "fixed", "h": 1},
               privacy={"noise_multiplier": sigma, "delta": delta, "max_grad_norm": 1.0, "accountant": "rdp",
                        "mode": "group", "reproducible": True})
    run = _run_then_resize(tmp_path, cfg, workers=1)
    c = config_from_mapping(cfg)
    bundle = c.data.load(c.seed)
    q2 = min(1.0, c.batch_size * 2 / sum(len(s) for s in c.data.shards(bundle.targets, 2, c.batch_size, c.seed)))
    q1 = min(1.0, c.batch_size / sum(len(s) for s in c.data.shards(bundle.targets, 1, c.batch_size, c.seed)))
    assert q1 != q2
    final = load_rank_state(run / "checkpoints" / checkpoint_name(STEPS), 0)
    hist = final["privacy"]["accountant"]["history"]
    got = [(round(s, 9), round(q, 12), n) for s, q, n in hist]
    assert got == [(sigma, round(q2, 12), 4), (sigma, round(q1, 12), 4)]
    ref = RDPAccountant()  # the real Opacus accountant, fed the two segments by hand
    ref.history = [(sigma, q2, 4), (sigma, q1, 4)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(ref.get_epsilon(delta), rel=1e-9)
    assert summary["resized_from_workers"] == 2


def _forge(run: Path, states: list[dict]) -> None:
    """Replace the run's step-4 checkpoint by ``states`` (one per rank), with a valid meta."""
    from distsched.train.checkpoint import digests, save_rank_state, write_meta

    ck = run / "checkpoints" / checkpoint_name(4)
    shutil.rmtree(ck)
    ck.mkdir()
    for r, s in enumerate(states):
        save_rank_state(ck, r, s)
    write_meta(ck, {"step": 4, "world_size": len(states), "sha256": digests(ck, range(len(states)))})


def test_loop_restores_a_two_rank_checkpoint_at_one_rank_as_its_average(tmp_path: Path) -> None:
    """Fast, in one process: a 2-rank checkpoint (rank 1's model shifted) resumed at 1 worker ends where
    a 1-worker checkpoint holding the hand-averaged model and the re-derived data position ends."""
    from distsched.train import LocalSession, prepare_run, train_worker

    torch.set_num_threads(1)
    cfg1 = config_from_mapping(dict(BASE, workers=1, sync={"rule": "fixed", "h": 1}))

    def fresh(name: str) -> Path:
        folder, cfg = prepare_run(cfg1, run_dir=tmp_path / name)
        train_worker(cfg, folder.root, LocalSession(folder.checkpoints, 0, 1, keep=5))
        shutil.rmtree(folder.checkpoints / checkpoint_name(STEPS))
        (folder.root / "summary.json").unlink()
        return folder.root

    def resume(root: Path) -> dict:
        folder, cfg = prepare_run(resume=root)
        return train_worker(cfg, folder.root, LocalSession(folder.checkpoints, 0, 1, keep=5, resume=True))

    a, b = fresh("a"), fresh("b")
    s0 = load_rank_state(a / "checkpoints" / checkpoint_name(4), 0)
    s1 = dict(s0, model={k: v + 0.05 if v.is_floating_point() else v for k, v in s0["model"].items()})
    _forge(a, [dict(s0, world_size=2), dict(s1, world_size=2)])
    bundle = cfg1.data.load(cfg1.seed)
    old_bpe = len(cfg1.data.shards(bundle.targets, 2, 16, cfg1.seed)[0]) // 16
    new_bpe = len(cfg1.data.shards(bundle.targets, 1, 16, cfg1.seed)[0]) // 16
    e, bt = int(s0["sampler"]["epoch"]), int(s0["sampler"]["batch"])
    pos = e * new_bpe + round(bt * new_bpe / old_bpe)  # the epoch fraction kept, by hand
    avg = {k: (s0["model"][k] + s1["model"][k]) / 2 if s0["model"][k].is_floating_point() else s0["model"][k]
           for k in s0["model"]}
    _forge(b, [dict(s0, model=avg, sampler={"epoch": pos // new_bpe, "batch": pos % new_bpe})])

    got, ref = resume(a), resume(b)
    assert got["resized_from_workers"] == 2 and ref["resized_from_workers"] is None
    mg = load_rank_state(a / "checkpoints" / checkpoint_name(STEPS), 0)["model"]
    mr = load_rank_state(b / "checkpoints" / checkpoint_name(STEPS), 0)["model"]
    for k in mr:
        assert torch.allclose(mg[k], mr[k], atol=1e-6), k
    assert got["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-6)


def test_resize_with_exchanges_in_flight_is_one_line_before_config_yaml_is_touched(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 2-rank checkpoint taken while a delayed exchange (``sync.delay > 0``) was in flight, resumed at 1 worker:
    one line from the driver, exit 2, config.yaml keeps the run's size (was: the workers' traceback, exit 1,
    after config.yaml had been rewritten at the new size, so every later --resume failed too)."""
    import yaml

    from distsched.train import LocalSession, train_worker

    torch.set_num_threads(1)
    mapping = dict(BASE, workers=1, sync={"name": "fixed", "h": 4, "delay": 2})
    folder, cfg = prepare_run(config_from_mapping(mapping), run_dir=tmp_path / "run")
    train_worker(cfg, folder.root, LocalSession(folder.checkpoints, 0, 1, keep=5))
    shutil.rmtree(folder.checkpoints / checkpoint_name(STEPS))
    (folder.root / "summary.json").unlink()
    s0 = load_rank_state(folder.checkpoints / checkpoint_name(4), 0)
    engine = dict(s0["engine"], pending=[{"apply_at": 5, "totals": []}])  # what rank r of 2 holds mid-exchange
    _forge(folder.root, [dict(s0, world_size=2, engine=engine)] * 2)
    folder.config_path.write_text(yaml.safe_dump(dict(mapping, workers=2)))
    before = folder.config_path.read_text()
    rc = main(["train", "--resume", str(folder.root), "--workers", "1", "--launcher", "processes", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "in flight" in err, err
    assert folder.config_path.read_text() == before
