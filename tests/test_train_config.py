"""Training config: the examples load, bad keys and types give one line naming the key (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distsched import cli
from distsched.train import TrainConfig, load_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BASE = {
    "name": "t",
    "workers": 2,
    "steps": 20,
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": 20},
    "sync": {"name": "qsr", "h_base": 2, "alpha": 0.15},
}


@pytest.mark.parametrize("name", ["digits_qsr.yaml", "digits_noniid.yaml", "synthetic_adacomm.yaml"])
def test_examples_load(name):
    cfg = load_config(EXAMPLES / name)
    assert isinstance(cfg, TrainConfig)
    assert cfg.workers >= 2


def _write(tmp_path, **changes) -> Path:
    data = {**BASE, **changes}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"stepz": 3}, "unknown key stepz"),
        ({"steps": "ten"}, "steps: expected an integer"),
        ({"model": {"name": "mlp", "widths": [3]}}, "unknown key model.widths"),
        ({"data": {"name": "digits", "partition": "dirichlet"}}, "partition"),
        ({"data": {"name": "mnist"}}, "data.name"),
        ({"optimizer": {"name": "sgd", "momentum": 1.5}}, "momentum"),
        ({"schedule": {"name": "cosine", "lr": 0.1, "total_stepz": 20}}, "unknown key schedule.total_stepz"),
        ({"sync": {"name": "qsr", "h_base": 2, "alfa": 0.1}}, "unknown key sync.alfa for sync 'qsr'"),
        ({"sync": {"name": "sometimes"}}, "unknown sync 'sometimes' in sync.name"),
        ({"sync": {"name": "qsr", "h_base": 2}}, "missing required key sync.alpha for sync 'qsr'"),
        ({"sync": {"name": "fixed", "h": 0}}, "h must be an integer >= 1"),
        ({"sync": {"rule": "sometimes"}}, "unknown sync 'sometimes' in sync.name"),  # the deprecated alias
        ({"epochs": 2}, "exactly one of steps and epochs"),
        ({"workers": 0}, "workers"),
        ({"checkpoint": {"every": 10, "keep": "all"}}, "checkpoint.keep: expected an integer"),
        ({"privacy": {"noise_multiplier": -1.0}}, "privacy.noise_multiplier must be > 0"),
        # valid keys, but the workers could not run it: caught before any cluster starts
        ({"batch_size": 5000}, "batch_size must be <= the smallest shard"),
        ({"model": {"name": "cnn"}, "data": {"name": "synthetic"}}, "cnn"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, changes, needle):
    path = _write(tmp_path, **changes)
    assert cli.main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert needle in err
    assert err.startswith("distsched train: error:")


def test_missing_config_and_bad_workers(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert cli.main(["train", str(_write(tmp_path)), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err


def test_workers_override_and_round_trip(tmp_path):
    from distsched.train import config_from_mapping, config_to_mapping

    cfg = load_config(_write(tmp_path), {"workers": 3})
    assert cfg.workers == 3
    again = config_from_mapping(yaml.safe_load(yaml.safe_dump(config_to_mapping(cfg))))
    assert again == cfg


def test_demo_runs_the_digits_qsr_example():
    import argparse

    from distsched.commands import demo, train

    assert demo.example_config() == EXAMPLES / "digits_qsr.yaml"
    cfg = load_config(demo.example_config())
    assert cfg.sync["name"] == "qsr" and cfg.data.name == "digits" and cfg.workers == 2
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args([str(demo.example_config()), "--launcher", "ray"])
    assert args.address is None and args.out == "runs"  # embedded cluster, ./runs


def test_sync_rule_key_is_a_deprecated_alias_of_name():
    from distsched.train import config_from_mapping

    with pytest.warns(FutureWarning, match="sync.rule is deprecated: write sync.name"):
        old = config_from_mapping({**BASE, "sync": {"rule": "qsr", "h_base": 2, "alpha": 0.15}})
    assert old.sync == {"name": "qsr", "h_base": 2, "alpha": 0.15} == config_from_mapping(BASE).sync
