"""Run folders (issue 10, item 1): a folder holding a run is never reused for another one, and
simultaneous creations never share a folder."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import yaml

from distsched.cli import main
from distsched.report import RunFolder

N_PROCS = 24


def _race(parent: str, barrier, out) -> None:  # noqa: ANN001
    barrier.wait()
    out.put(str(RunFolder.create(parent, "same").root))


def test_simultaneous_creations_get_distinct_folders(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")
    for _ in range(4):  # 4 x 24 processes started at one barrier, all within the same second
        barrier, out = ctx.Barrier(N_PROCS), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, out)) for _ in range(N_PROCS)]
        for p in procs:
            p.start()
        roots = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert len(set(roots)) == N_PROCS, sorted(roots)
    assert len(list(tmp_path.iterdir())) == 4 * N_PROCS


def test_fresh_refuses_a_folder_holding_a_run(tmp_path: Path) -> None:
    folder = RunFolder.create(tmp_path, "a")
    assert RunFolder.fresh(folder.root) == folder  # empty: fine
    folder.write_config({"name": "a"})
    with pytest.raises(ValueError, match="already holds a run"):
        RunFolder.fresh(folder.root)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        RunFolder.fresh(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        RunFolder.create(tmp_path / "file", "a")


CFG = {"name": "other", "seed": 7, "workers": 1, "steps": 4, "batch_size": 8, "model": {"name": "mlp", "hidden": [4]},
       "data": {"name": "digits"}, "schedule": {"name": "constant", "lr": 0.1}}


def test_train_run_dir_holding_a_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "finished"
    run.mkdir()
    (run / "config.yaml").write_text("name: first\nseed: 1\n")
    (run / "summary.json").write_text('{"steps_done": 10}')
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    rc = main(["train", str(cfg), "--run-dir", str(run), "--launcher", "processes"])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "already holds a run" in err
    assert (run / "config.yaml").read_text() == "name: first\nseed: 1\n"
    assert (run / "summary.json").read_text() == '{"steps_done": 10}'


def test_a_file_as_run_dir_or_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    a_file = tmp_path / "file"
    a_file.write_text("keep")
    for flag in ("--run-dir", "--out"):
        rc = main(["train", str(cfg), flag, str(a_file), "--launcher", "processes"])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "not a directory" in err.lower(), err
    assert a_file.read_text() == "keep"


HOLD = "import sys; from distsched.report import RunFolder; RunFolder.create(sys.argv[1], 'busy'); " \
       "print(sorted(__import__('pathlib').Path(sys.argv[1]).iterdir())[0], flush=True); sys.stdin.read()"


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A second process continuing a run that is still training there (``train --resume``, ``--run-dir``,
    ``simulate --resume``) would interleave its metrics, checkpoints and summary with the first's (and, with
    DP, spend the budget twice from one history): one line, exit 2, nothing written; once the holder has
    ended (its lock goes with its process), the folder is usable again."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "runs")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        busy = Path(holder.stdout.readline().strip())  # created, and held, by the other process
        fed = Path(__file__).resolve().parents[1] / "examples" / "fed_digits.yaml"
        (busy / "config.yaml").write_text(fed.read_text())  # a simulation's (train --resume never reads it)
        before = sorted(p.name for p in busy.rglob("*"))
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump(CFG))
        for argv in (["train", "--resume", str(busy), "--launcher", "processes"],
                     ["train", str(cfg), "--run-dir", str(busy), "--launcher", "processes"],
                     ["simulate", "--resume", str(busy), "--executor", "local"]):
            rc = main(argv)
            err = capsys.readouterr().err
            assert rc == 2 and len(err.strip().splitlines()) == 1 and "in use by another" in err, (argv, err)
        assert sorted(p.name for p in busy.rglob("*")) == before
    finally:
        holder.communicate("", timeout=60)
    assert RunFolder(busy).claim().root == busy  # released with its process
