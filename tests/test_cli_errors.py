"""Every user-caused error is one line on stderr and exit 2, and nothing is written (issue 10,
items 10 and 12). ``/sys`` stands for a read-only target (sysfs refuses new files even to root)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distsched.cli import main

READ_ONLY = Path("/sys/distsched-read-only")

TRAIN = {"name": "e", "seed": 0, "workers": 1, "steps": 4, "batch_size": 8, "model": {"name": "mlp", "hidden": [4]},
         "data": {"name": "digits"}, "schedule": {"name": "constant", "lr": 0.1}}


def _one_line(capsys: pytest.CaptureFixture, argv: list[str], needle: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1, err
    assert needle.lower() in err.lower(), err


def _write(path: Path, mapping: dict) -> str:
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("command", ["train", "simulate"])
def test_directory_as_config(tmp_path: Path, capsys: pytest.CaptureFixture, command: str) -> None:
    _one_line(capsys, [command, str(tmp_path)], "directory")


def test_simulate_unknown_data_param(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = yaml.safe_load(Path("examples/fed_digits.yaml").read_text())
    cfg["data"]["params"] = {"test_size": 297, "no_such_key": 1}
    _one_line(capsys, ["simulate", _write(tmp_path / "f.yaml", cfg), "--out", str(tmp_path / "o")], "no_such_key")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_train_read_only_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _one_line(capsys, ["train", _write(tmp_path / "c.yaml", TRAIN), "--out", str(READ_ONLY), "--launcher",
                       "processes"], str(READ_ONLY))


def test_schedule_read_only_and_directory_targets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["schedule", "cosine", "--set", "lr=0.1", "--set", "total_steps=100", "--steps", "100"]
    _one_line(capsys, [*base, "--csv", str(READ_ONLY / "x.csv")], str(READ_ONLY))
    _one_line(capsys, [*base, "--plot", str(READ_ONLY / "x.png")], str(READ_ONLY))
    _one_line(capsys, [*base, "--plot", str(tmp_path)], "directory")
    _one_line(capsys, [*base, "--csv", str(tmp_path)], "directory")
    assert list(tmp_path.iterdir()) == [] and not Path(f"{tmp_path}.png").exists()


def test_schedule_steps_that_cannot_finish(capsys: pytest.CaptureFixture) -> None:
    _one_line(capsys, ["schedule", "constant", "--set", "lr=0.1", "--steps", str(10**11)], "at most")


def test_train_steps_that_cannot_finish(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write(tmp_path / "c.yaml", {**TRAIN, "steps": 10**14})
    _one_line(capsys, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "runs"), "--launcher", "processes"],
              "at most")
    assert not (tmp_path / "runs").exists()


def test_train_resume_with_another_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """config.yaml edited to another model between runs: the checkpoint's model does not load into it; one
    line from the driver naming the tensor, exit 2 (was each worker's traceback, exit 1); nothing rewritten."""
    from distsched.train import LocalSession, config_from_mapping, prepare_run, train_worker

    folder, run_cfg = prepare_run(config_from_mapping(TRAIN), run_dir=tmp_path / "run")
    train_worker(run_cfg, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1))
    kept = {p: p.read_bytes() for p in folder.root.rglob("*") if p.is_file() and p.name != "config.yaml"}
    _write(folder.config_path, {**TRAIN, "model": {"name": "mlp", "hidden": [8]}})
    _one_line(capsys, ["train", "--resume", str(folder.root), "--launcher", "processes", "--no-progress"],
              "does not fit the config's model: size mismatch for 1.weight")
    assert {p: p.read_bytes() for p in folder.root.rglob("*") if p.is_file() and p.name != "config.yaml"} == kept


def test_train_unreachable_privacy_target(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A target_epsilon no noise level reaches is found by the driver's preflight (the noise the workers
    would plan): one line, exit 2, no run folder (was a worker's traceback, exit 1, and a run folder)."""
    cfg = {**TRAIN, "privacy": {"target_epsilon": 0.001, "delta": 1e-5}}
    _one_line(capsys, ["train", _write(tmp_path / "c.yaml", cfg), "--out", str(tmp_path / "runs"), "--launcher",
                       "processes", "--no-progress"], "privacy: target_epsilon=0.001 is not reachable")
    assert not (tmp_path / "runs").exists()


def test_train_resume_with_workers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "config.yaml", TRAIN)
    _one_line(capsys, ["train", "--resume", str(run), "--workers", "0"], "--workers must be N or MIN:MAX")
    # a resize (tests/test_elastic.py) is refused for DP in local mode, before config.yaml is touched
    _write(run / "config.yaml", {**TRAIN, "workers": 2, "sync": {"rule": "fixed", "h": 4},
                                 "privacy": {"noise_multiplier": 1.0, "delta": 1e-5, "mode": "local"}})
    before = (run / "config.yaml").read_text()
    _one_line(capsys, ["train", "--resume", str(run), "--workers", "1"], "local mode")
    assert (run / "config.yaml").read_text() == before
    # a size whose shards are smaller than a batch: refused, and config.yaml keeps the run's own size (it was
    # rewritten with the refused one, so that every later plain --resume failed too)
    _write(run / "config.yaml", {**TRAIN, "batch_size": 32})
    before = (run / "config.yaml").read_text()
    _one_line(capsys, ["train", "--resume", str(run), "--workers", "50", "--launcher", "processes"],
              "batch_size must be <= the smallest shard")
    assert (run / "config.yaml").read_text() == before


def test_train_resume_with_loosened_privacy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """config.yaml edited between runs (another delta, reproducible flipped): one line from the driver, exit 2,
    before any worker or launcher starts (was a worker's traceback, exit 1); nothing of the run rewritten."""
    from distsched.train import LocalSession, config_from_mapping, prepare_run, train_worker

    cfg = {**TRAIN, "privacy": {"noise_multiplier": 1.0, "delta": 1e-5, "reproducible": True}}
    folder, run_cfg = prepare_run(config_from_mapping(cfg), run_dir=tmp_path / "run")
    train_worker(run_cfg, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1))
    kept = {p: p.read_bytes() for p in folder.root.rglob("*") if p.is_file() and p.name != "config.yaml"}
    for key, value in [("delta", 1e-6), ("reproducible", False)]:
        _write(folder.config_path, {**cfg, "privacy": {**cfg["privacy"], key: value}})
        _one_line(capsys, ["train", "--resume", str(folder.root), "--launcher", "processes", "--no-progress"],
                  f"privacy.{key}: the run was started with")
    assert {p: p.read_bytes() for p in folder.root.rglob("*") if p.is_file() and p.name != "config.yaml"} == kept


@pytest.mark.parametrize("factory", ["os:system", "subprocess:run", "builtins:exec", "os.path:join"])
def test_standard_library_factory_refused(tmp_path: Path, capsys: pytest.CaptureFixture, factory: str) -> None:
    marker = tmp_path / "ran"
    cfg = {**TRAIN, "data": {"name": factory, "kwargs": {"command": f"touch {marker}"}}}
    _one_line(capsys, ["train", _write(tmp_path / "c.yaml", cfg), "--out", str(tmp_path / "runs"), "--launcher",
                       "processes"], "standard library")
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_train_bad_schedule_key(capsys: pytest.CaptureFixture) -> None:
    _one_line(capsys, ["train", "examples/digits_qsr.yaml", "--set", "schedule.bogus=1"],
              "unknown key schedule.bogus for schedule")


def test_simulate_bad_client_lr_schedule_names_its_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A federated schedule's error names where it sits (client.lr), not a generic ``schedule``."""
    cfg = yaml.safe_load(Path("examples/fed_digits.yaml").read_text())
    cfg["client"]["lr"] = {"name": "constant", "lr": 0.1, "bogus": 1}
    out = tmp_path / "o"
    _one_line(capsys, ["simulate", _write(tmp_path / "f.yaml", cfg), "--out", str(out), "--executor", "local"],
              "client.lr.bogus")
    assert not out.exists()
