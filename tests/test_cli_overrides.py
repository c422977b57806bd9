"""``--set KEY.PATH=VALUE`` for ``train`` and ``simulate``: recorded in the run's config.yaml, refused in
one line (exit 2, nothing written) for a key the config does not know."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distsched.cli import main
from distsched.config import apply_sets, parse_sets
from distsched.report import read_metrics

TRAIN = {"name": "o", "seed": 0, "workers": 1, "steps": 4, "batch_size": 8, "log_every": 2,
         "model": {"name": "mlp", "hidden": [4]}, "data": {"name": "digits"},
         "schedule": {"name": "constant", "lr": 0.1}, "sync": {"rule": "fixed", "h": 2}}
ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, mapping: dict) -> str:
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return str(path)


def test_parse_and_apply():
    assert parse_sets(["a.b=0.05", "c=[1, 2]", "d={name: x}", "e=true", "f=1e-4"]) == [
        ("a.b", 0.05), ("c", [1, 2]), ("d", {"name": "x"}), ("e", True), ("f", "1e-4")]  # YAML 1.1, as configs
    base = {"schedule": {"name": "cosine", "lr": 0.1}, "steps": 5}
    out = apply_sets(base, ["schedule.lr=0.05", "model.hidden=[8]", "steps=7"])
    assert out == {"schedule": {"name": "cosine", "lr": 0.05}, "steps": 7, "model": {"hidden": [8]}}
    assert base["schedule"]["lr"] == 0.1  # the input is not changed
    for bad, msg in (("lr", "KEY.PATH=VALUE"), ("a..b=1", "KEY.PATH=VALUE"), ("x=[1", "as YAML"),
                     ("steps.x=1", "steps is 5, not a mapping")):
        with pytest.raises(ValueError, match=msg):
            apply_sets(base, [bad])


def test_train_set_is_recorded_in_config_yaml(tmp_path, capsys):
    cfg = _write(tmp_path / "c.yaml", TRAIN)
    run = tmp_path / "run"
    argv = ["train", cfg, "--set", "schedule.lr=0.05", "--set", "steps=6", "--launcher", "processes",
            "--run-dir", str(run)]
    assert main(argv) == 0, capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["schedule"]["lr"] == 0.05 and saved["steps"] == 6 and saved["name"] == "o"
    records = [r for r in read_metrics(run / "metrics.jsonl") if "step" in r]
    assert [r["step"] for r in records] == [2, 4, 6] and {r["lr"] for r in records} == {0.05}
    out = capsys.readouterr().out
    # the processes launcher: the folder once, progress lines as under Ray, the summary, the dashboard
    assert out.count("run folder:") == 1 and "step 2/6  lr 0.05" in out and "step 6/6  lr 0.05" in out, out
    assert f"dashboard: {run / 'plots' / 'dashboard.png'}" in out and (run / "plots" / "dashboard.png").exists()
    assert (run / "tensorboard").is_dir()


@pytest.mark.parametrize("command", ["train", "simulate"])
@pytest.mark.parametrize(("item", "needle"), [("{block}.bogus=1", "bogus"), ("nokey=3", "nokey")])
def test_unknown_key_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, command, item, needle):
    if command == "train":
        cfg = _write(tmp_path / "c.yaml", TRAIN)
    else:
        cfg = _write(tmp_path / "f.yaml", yaml.safe_load((ROOT / "examples" / "fed_digits.yaml").read_text()))
    out = tmp_path / "out"
    item = item.format(block="optimizer" if command == "train" else "client")
    assert main([command, cfg, "--set", item, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("item", "needle"), [("workers=true", "workers: expected"),
                                               ("steps=4.0", "steps: expected an integer")])
def test_wrong_type_equal_to_the_file_value_is_refused(tmp_path, capsys, item, needle):
    """``--set workers=true`` where the file says ``workers: 1`` (``True == 1`` in Python) was dropped as "no
    change" and the run started; a wrong type is one line, exit 2, whatever the file's value."""
    out = tmp_path / "out"
    assert main(["train", _write(tmp_path / "c.yaml", TRAIN), "--set", item, "--out", str(out),
                 "--launcher", "processes", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_set_with_resume_is_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--set", "steps=3"]) == 2
    assert "a resumed run keeps its config.yaml" in capsys.readouterr().err


def test_ray_dashboard_without_ray_default_is_one_line_exit_2(tmp_path, capsys):
    import importlib.util

    from distsched.commands.train import DASHBOARD_MODULES

    if all(importlib.util.find_spec(m) is not None for m in DASHBOARD_MODULES):
        pytest.skip("ray[default] is installed here: --dashboard starts")
    out = tmp_path / "out"
    assert main(["train", _write(tmp_path / "c.yaml", TRAIN), "--dashboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pip install 'ray[default]'" in err
    assert not out.exists()
