"""Checkpoints (issue 10, items 2 and 7): checksummed, loaded with ``weights_only=True``, damaged ones
skipped for the newest intact one, none intact refused in one line; every finished run folder holds
``model.pt``. Reference: the uninterrupted run."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distsched.cli import main
from distsched.federated.checkpoint import latest_checkpoint as fed_latest
from distsched.federated.checkpoint import load_checkpoint, save_checkpoint
from distsched.report import RunFolder, read_metrics
from distsched.train import LocalSession, config_from_mapping, prepare_run, train_worker
from distsched.train.checkpoint import (
    capture_rng,
    checkpoint_name,
    damage,
    latest_checkpoint,
    load_rank_state,
    restore_rng,
)

STEPS = 12
CFG = {
    "name": "ck", "seed": 5, "workers": 1, "steps": STEPS, "batch_size": 16, "log_every": 2,
    "model": {"name": "mlp", "hidden": [8]}, "data": {"name": "digits"},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS},
    "checkpoint": {"every": 4, "keep": 5},
}


def _train(root: Path, resume: bool = False) -> dict:
    if resume:
        folder, cfg = prepare_run(resume=root)
    else:
        folder, cfg = prepare_run(config_from_mapping(CFG), run_dir=root)
    return train_worker(cfg, folder.root, LocalSession(folder.checkpoints, 0, 1, keep=cfg.checkpoint.keep))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> RunFolder:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ck") / "run"
    _train(root)
    return RunFolder(root)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_rng_state_round_trips_through_weights_only(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng()
    want = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    torch.save(state, tmp_path / "rng.pt")
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(3).tolist(), torch.rand(3))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])


def test_checkpoints_load_weights_only_and_carry_checksums(finished: RunFolder) -> None:
    steps = sorted(p.name for p in finished.checkpoints.iterdir())
    assert steps == [checkpoint_name(s) for s in (4, 8, 12)]
    for name in steps:
        folder = finished.checkpoints / name
        meta = json.loads((folder / "meta.json").read_text())
        assert set(meta["sha256"]) == {"rank_0.pt"}
        assert damage(folder) is None
        torch.load(folder / "rank_0.pt", weights_only=True)  # raises on anything but tensors/plain types


def test_model_pt_is_the_final_model(finished: RunFolder) -> None:
    final = load_rank_state(finished.checkpoints / checkpoint_name(STEPS), 0)["model"]
    exported = torch.load(finished.model_path, weights_only=True)
    model = config_from_mapping(CFG).model.build((64,), 10)
    model.load_state_dict(exported)  # a plain state_dict of the configured model
    assert exported.keys() == final.keys()
    for k in final:
        assert torch.equal(exported[k], final[k])


def test_damaged_checkpoints_are_skipped_and_resume_equals_uninterrupted(
    finished: RunFolder, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished.root, copy)
    ck = copy / "checkpoints"
    _truncate(ck / checkpoint_name(12) / "rank_0.pt")  # a torn write
    (ck / checkpoint_name(8) / "meta.json").write_text("{")  # a torn meta
    (copy / "summary.json").unlink()
    capfd.readouterr()
    assert latest_checkpoint(ck) == ck / checkpoint_name(4)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("skipping damaged checkpoint" in ln for ln in err), err
    for name in (checkpoint_name(8), checkpoint_name(12)):
        shutil.rmtree(ck / name)  # what a resume from step 4 rewrites
    summary = _train(copy, resume=True)
    assert summary["resumed_from_step"] == 4 and summary["steps_done"] == STEPS
    ours = load_rank_state(ck / checkpoint_name(12), 0)["model"]
    ref = load_rank_state(finished.checkpoints / checkpoint_name(12), 0)["model"]
    for k in ref:
        assert torch.equal(ours[k], ref[k])


def test_torn_last_metrics_record_is_dropped_on_resume(finished: RunFolder, tmp_path: Path, capfd) -> None:
    """A run killed while writing a metrics record leaves a last line cut short: the resume drops it with one
    warning line and ends with the uninterrupted run's records (before: every resume failed on it). A damaged
    line in the middle is not a crash's trace: still refused, naming the line."""
    copy = tmp_path / "torn"
    shutil.copytree(finished.root, copy)
    shutil.rmtree(copy / "checkpoints" / checkpoint_name(12))
    (copy / "summary.json").unlink()
    full = (copy / "metrics.jsonl").read_text()
    (copy / "metrics.jsonl").write_text(full[:-25])  # the last record, torn
    capfd.readouterr()
    summary = _train(copy, resume=True)
    assert summary["resumed_from_step"] == 8 and summary["steps_done"] == STEPS
    err = capfd.readouterr().err.strip().splitlines()
    assert [ln for ln in err if "metrics" in ln] == [ln for ln in err if "dropping the torn last record" in ln]
    assert len([ln for ln in err if "torn" in ln]) == 1

    def steps(root: Path) -> list:
        return [(r["step"], r["lr"], r["loss"]) for r in read_metrics(root / "metrics.jsonl")]

    assert steps(copy) == steps(finished.root)
    lines = full.splitlines(keepends=True)
    (copy / "metrics.jsonl").write_text("".join(lines[:2]) + "{torn\n" + "".join(lines[2:]))
    with pytest.raises(ValueError, match="metrics.jsonl:3: not a JSON object"):
        _train(copy, resume=True)


def test_no_intact_checkpoint_is_one_line_exit_2(finished: RunFolder, tmp_path: Path, capfd) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished.root, copy)
    for step in (4, 8, 12):
        _truncate(copy / "checkpoints" / checkpoint_name(step) / "rank_0.pt")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    capfd.readouterr()
    rc = main(["train", "--resume", str(copy), "--launcher", "processes"])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no intact checkpoint" in err[0], err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_federated_checkpoints(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    state = {"params": torch.arange(5.0), "strategy": {"m": torch.zeros(5), "t": np.int64(3)}, "seed": 0,
             "hist": [(1.0, np.float64(0.5))]}
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, r, {**state, "params": state["params"] + r})
    loaded = load_checkpoint(fed_latest(tmp_path))  # weights_only=True inside
    assert loaded["round"] == 3 and torch.equal(loaded["params"], torch.arange(5.0) + 3)
    assert loaded["strategy"]["t"] == 3 and loaded["hist"] == [(1.0, 0.5)]
    _truncate(tmp_path / "round_000003.pt")
    (tmp_path / "round_000002.pt").write_bytes(b"not a checkpoint")
    capfd.readouterr()
    assert fed_latest(tmp_path) == tmp_path / "round_000001.pt"
    assert len(capfd.readouterr().err.strip().splitlines()) == 2
    _truncate(tmp_path / "round_000001.pt")
    with pytest.raises(ValueError, match="no intact checkpoint"):
        fed_latest(tmp_path)


def test_ray_snapshot_damage_is_set_aside(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from distsched.cluster.trainer import SNAPSHOT, _set_aside_damaged_snapshot

    folder = RunFolder.open(tmp_path / "run")
    (folder.checkpoints / SNAPSHOT).write_text('{"checkpoints": [')
    _set_aside_damaged_snapshot(folder)
    assert not (folder.checkpoints / SNAPSHOT).exists()
    assert (folder.checkpoints / f"{SNAPSHOT}.damaged").exists()
    assert len(capfd.readouterr().err.strip().splitlines()) == 1

