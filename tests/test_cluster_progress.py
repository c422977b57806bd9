"""Driver progress: following metrics.jsonl while rank 0 appends (and truncates on resume)."""

from __future__ import annotations

import io
import json

from distsched.cluster.progress import MetricsFollower, Progress, format_record


def _append(path, *records, newline=True):
    with open(path, "a", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + ("\n" if newline else ""))


def test_follower_reads_complete_lines_once_and_survives_truncation(tmp_path):
    path = tmp_path / "metrics.jsonl"
    seen = []
    f = MetricsFollower(path, seen.append)
    f.poll()  # no file yet
    _append(path, {"step": 10}, {"step": 20})
    _append(path, {"step": 30}, newline=False)  # being written: not read yet
    f.poll()
    assert [r["step"] for r in seen] == [10, 20]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n")
    f.poll()
    assert [r["step"] for r in seen] == [10, 20, 30]
    # a resumed run truncates to its checkpoint (step 20) and writes 30 again, then 40
    path.write_text(json.dumps({"step": 10}) + "\n" + json.dumps({"step": 20}) + "\n")
    f.poll()
    _append(path, {"step": 30}, {"step": 40})
    f.poll()
    assert [r["step"] for r in seen] == [10, 20, 30, 40]


def test_plain_progress_lines_name_every_quantity(tmp_path):
    path = tmp_path / "metrics.jsonl"
    out = io.StringIO()
    with Progress(path, 40, stream=out):
        _append(path, {"step": 40, "lr": 0.05, "H": 8, "loss": 0.25, "rounds": 7, "bytes": 3 * 1024**2})
    line = out.getvalue().strip()
    assert line == "step 40/40  lr 0.05  H 8  loss 0.2500  rounds 7  bytes 3.0 MiB"
    assert format_record({"step": 1, "epsilon": 1.25}).endswith("epsilon 1.250")


def test_resumed_run_shows_only_steps_after_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _append(path, *({"step": s} for s in range(10, 80, 10)))  # an interrupted run got to step 70
    seen = []
    f = MetricsFollower(path, seen.append, after_step=50)  # resumed from the checkpoint at step 50
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(10, 60, 10)))  # rank 0 truncates
    f.poll()
    _append(path, {"step": 60}, {"step": 70}, {"step": 80})
    f.poll()
    assert [r["step"] for r in seen] == [60, 70, 80]
