"""``distsched schedule`` and ``distsched demo`` (the schedule showcase), in-process and as a subprocess."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from distsched import schedules as S
from distsched.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_list_shows_every_catalogue_entry_with_parameters(capsys):
    assert main(["schedule", "--list"]) == 0
    out = capsys.readouterr().out
    table, note = out.split("\n\n")
    lines = table.splitlines()
    assert [ln.split()[0] for ln in lines] == list(S.CATALOGUE)
    assert note.startswith("total_steps is the whole run, warmup included")
    by_name = {ln.split()[0]: ln for ln in lines}
    assert "cycle_steps: int" in by_name["cosine_restarts"] and "cycle_decay: float = 1" in by_name["cosine_restarts"]
    assert "schedules: list[schedule]" in by_name["join"]
    assert "<class" not in "".join(lines)


def test_schedule_summary_csv_and_plot(tmp_path, capsys):
    out_csv, out_png = tmp_path / "curve.csv", tmp_path / "plots" / "curve.png"
    argv = ["schedule", "cosine", "--set", "lr=0.1", "--set", "total_steps=100", "--set", "min_lr=1e-3",
            "--set", "warmup_steps=10", "--steps", "150", "--csv", str(out_csv), "--plot", str(out_png)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    expected = S.Warmup(S.Cosine(0.1, 100, 1e-3), warmup_steps=10)
    for part in ("first 0 |", "peak 0.1 at step 10", "last 0.001 |", "min 0 at step 0"):
        assert part in text
    rows = list(csv.DictReader(out_csv.open()))
    assert [int(r["step"]) for r in rows] == list(range(150))
    assert [float(r["value"]) for r in rows] == [expected(t) for t in range(150)]  # exact round trip
    assert float(rows[100]["value"]) == 1e-3 < float(rows[99]["value"])  # total_steps includes the warmup
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_nested_values_are_read_as_yaml(capsys):
    argv = ["schedule", "join", "--set", "boundaries=[3]", "--steps", "5",
            "--set", "schedules=[{name: constant, lr: 0.5}, {name: multistep, lr: 0.2, milestones: [1]}]"]
    assert main(argv) == 0
    assert "last 0.02 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["schedule", "cosine", "--set", "lr=0.1", "--set", "total_steps=0"], "total_steps must be an integer >= 1"),
        (["schedule", "cosine", "--set", "lr=0.1", "--set", "min_lr=0.5", "--set", "total_steps=5"], "min_lr"),
        (["schedule", "cosin"], "unknown schedule 'cosin' in schedule.name"),
        (["schedule", "cosine", "--set", "lr=0.1", "--set", "T_max=5"], "unknown key schedule.T_max"),
        (["schedule", "cosine", "--set", "lr"], "KEY=VALUE"),
        (["schedule", "constant", "--set", "lr=0.1", "--steps", "0"], "steps"),
        (["schedule"], "name is required"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err
    assert len(err.strip().splitlines()) == 1


def test_subprocess_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "distsched", "schedule", "one_cycle", "--set", "lr=0.1", "--set", "total_steps=100",
         "--set", "pct_start=1.5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "distsched schedule: error: schedule.pct_start must be in (0.0, 1.0), got 1.5"


def test_showcase_writes_a_png(tmp_path, capsys):
    folder = tmp_path / "schedule-showcase"
    assert main(["schedule", "--showcase", str(folder), "--steps", "200"]) == 0
    png = folder / "schedules.png"
    assert str(png) in capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_MAGIC
