"""A checkpoint written before the loss window counted examples (commit 26bdac9: ``window`` was ``(sum of
the steps' mean losses, steps)`` and there was no ``window_steps``) resumes into the new window
``(sum of loss x examples, examples)``: the first metrics record after the resume, whose window
straddles the checkpoint, equals the uninterrupted run's."""

from __future__ import annotations

import shutil

from distsched.report import RunFolder, read_metrics
from distsched.train import config_from_mapping, prepare_run, run_processes
from distsched.train.checkpoint import (
    checkpoint_name,
    digests,
    load_rank_state,
    read_meta,
    save_rank_state,
    write_meta,
)

STEPS, BATCH = 12, 16
CFG = {
    "name": "legacy-window",
    "seed": 3,
    "workers": 1,
    "steps": STEPS,
    "batch_size": BATCH,
    "log_every": 5,  # records at 5, 10, 12
    "model": {"name": "mlp", "hidden": [16]},
    "data": {"name": "digits", "partition": "iid"},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS, "min_lr": 0.001},
    "checkpoint": {"every": 7, "keep": 4},  # step 7: the window holds steps 6 and 7
}


def _as_before(step_folder) -> None:
    """Rewrite rank 0's state as the code before 26bdac9 wrote it: no ``window_steps``; the window is
    (sum of the steps' mean losses, steps), i.e. the new (sum loss x 16, 16 x steps) divided by the batch
    (exact: 16 is a power of two); the checksum in the meta file follows."""
    state = load_rank_state(step_folder, 0)
    steps = state.pop("window_steps")
    total, examples = state["window"]
    assert (steps, examples) == (2, 2 * BATCH)  # steps 6 and 7, full batches
    state["window"] = (total / BATCH, examples // BATCH)
    save_rank_state(step_folder, 0, state)
    meta = read_meta(step_folder)
    write_meta(step_folder, {**meta, "sha256": digests(step_folder, range(1))})


def test_a_checkpoint_without_window_steps_resumes_to_the_uninterrupted_records(tmp_path):
    ref, cfg = prepare_run(config_from_mapping(CFG), run_dir=tmp_path / "straight")
    run_processes(cfg, ref)
    # the run as it was at step 7, written by the old code: its later checkpoints gone, step 7's rewritten
    shutil.copytree(ref.root, tmp_path / "resumed")
    folder = RunFolder.open(tmp_path / "resumed")
    for step_folder in folder.checkpoints.iterdir():
        if step_folder.name != checkpoint_name(7):
            shutil.rmtree(step_folder)
    _as_before(folder.checkpoints / checkpoint_name(7))
    summary = run_processes(cfg, folder)  # resumes after step 7 (its metrics past step 7 are dropped first)
    assert summary["resumed_from_step"] == 7
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    got, want = strip(read_metrics(folder.metrics_path)), strip(read_metrics(ref.metrics_path))
    assert [r["step"] for r in got] == [5, 10, 12]
    assert got[1]["loss"] == want[1]["loss"]  # steps 6..10: two before the checkpoint, three after
    assert got == want
