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
    assert cfg.sync.name == "qsr" and cfg.data.name == "digits" and cfg.workers == 2
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args([str(demo.example_config()), "--launcher", "ray"])
    assert args.address is None and args.out == "runs"  # embedded cluster, ./runs


def test_sync_rule_key_is_a_deprecated_alias_of_name():
    from distsched.train import SyncConfig, config_from_mapping, config_to_mapping

    with pytest.warns(FutureWarning, match="sync.rule is deprecated: write sync.name"):
        old = config_from_mapping({**BASE, "sync": {"rule": "qsr", "h_base": 2, "alpha": 0.15}})
    assert old.sync == SyncConfig("qsr", {"h_base": 2, "alpha": 0.15}) == config_from_mapping(BASE).sync
    assert config_to_mapping(old)["sync"] == {"name": "qsr", "h_base": 2, "alpha": 0.15}  # written as name


TRAIN_EXAMPLES = sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("fed_"))
BLOCKS = ("schedule", "sync", "privacy", "controller")


def test_the_four_blocks_are_typed_objects_read_once():
    """schedule, sync, privacy and controller are typed objects after loading; the stateless schedule is the
    one object every consumer calls, the stateful rule and controller are built fresh from their typed spec."""
    from distsched import schedules as S
    from distsched.control import ReduceOnPlateau
    from distsched.privacy import PrivacyConfig
    from distsched.sync import QSR
    from distsched.train import ControllerConfig, SyncConfig

    dp, plateau = load_config(EXAMPLES / "digits_dp.yaml"), load_config(EXAMPLES / "digits_plateau.yaml")
    assert dp.schedule == S.Cosine(lr=0.1, total_steps=600, min_lr=0.01) and dp.schedule(0) == pytest.approx(0.1)
    assert isinstance(dp.sync, SyncConfig) and dp.sync.every_step and (dp.sync.name, dict(dp.sync.params)) == (
        "fixed", {"h": 1})
    assert isinstance(dp.privacy, PrivacyConfig) and dp.privacy.target_epsilon == 4.0 and dp.privacy.mode == "group"
    assert isinstance(plateau.controller, ControllerConfig) and plateau.controller.name == "plateau"
    a, b = plateau.controller.build(), plateau.controller.build()
    assert isinstance(a, ReduceOnPlateau) and a is not b and (a.reduce_factor, a.patience, a.mode) == (0.5, 2, "min")
    rule = plateau.sync.build_rule()
    assert isinstance(rule, QSR) and rule is not plateau.sync.build_rule() and not plateau.sync.every_step
    assert plateau.privacy is None and dp.controller is None
    with pytest.raises(TypeError, match="typed blocks"):  # a mapping is read by config_from_mapping, not kept raw
        TrainConfig(schedule={"name": "constant", "lr": 0.1}, steps=10)


@pytest.mark.parametrize("path", TRAIN_EXAMPLES, ids=lambda p: p.name)
def test_config_yaml_writes_the_blocks_as_the_user_wrote_them(path):
    """A run folder's config.yaml shows each block verbatim (keys, order, values), not the typed object's
    every default; reading it back gives the same typed config."""
    from distsched.train import config_from_mapping, config_to_mapping

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = config_to_mapping(load_config(path))
    for key in BLOCKS:
        assert out[key] == raw.get(key) and list(out[key] or ()) == list(raw.get(key) or ()), key
    assert config_from_mapping(yaml.safe_load(yaml.safe_dump(out, sort_keys=False))) == load_config(path)


def test_an_old_run_folder_config_reads_and_writes_back_unchanged():
    """A run folder written by an older version (sync.rule, no world_lr) loads with typed blocks; written back,
    its blocks are as they were (the rule under its new key, first) and every other key keeps its value."""
    from distsched.train import SyncConfig, config_from_mapping, config_to_mapping

    text = (Path(__file__).parent / "data" / "example_runs" / "digits_qsr" / "config.yaml").read_text(encoding="utf-8")
    saved = yaml.safe_load(text)
    with pytest.warns(FutureWarning, match="sync.rule is deprecated"):
        cfg = config_from_mapping(saved)
    assert cfg.sync == SyncConfig("qsr", {"h_base": 2, "alpha": 0.1414, "h_max": 32})
    out = config_to_mapping(cfg)
    assert list(out["sync"].items()) == [("name", "qsr"), ("h_base", 2), ("alpha", 0.1414), ("h_max", 32)]
    assert list(out["schedule"].items()) == list(saved["schedule"].items())
    others = {k: v for k, v in saved.items() if k != "sync"}
    assert {k: v for k, v in out.items() if k in others} == others


def test_a_block_built_in_python_is_written_as_its_spec():
    """A block set in Python (not read from YAML) is written by its own to_spec: name, parameters and the
    options that differ from the defaults; the file reads back to an equal config."""
    import dataclasses

    from distsched import schedules as S
    from distsched.sync import LRCompensation, OuterSGD
    from distsched.train import ControllerConfig, SyncConfig, config_from_mapping, config_to_mapping

    cfg = config_from_mapping(BASE)
    sync = SyncConfig("qsr", {"h_base": 2, "alpha": 0.15}, fragments=2, lr_compensation=LRCompensation(4),
                      outer=OuterSGD(lr=S.constant(0.5), nesterov=False))
    cfg = dataclasses.replace(cfg, schedule=S.warmup(S.constant(0.1), warmup_steps=3), sync=sync,
                              controller=ControllerConfig("plateau", {"patience": 3}))
    out = config_to_mapping(cfg)
    assert out["sync"] == {"name": "qsr", "h_base": 2, "alpha": 0.15, "lr_compensation": {"h_ref": 4, "power": 0.5},
                           "outer": {"lr": {"name": "constant", "lr": 0.5}, "momentum": 0.9, "nesterov": False},
                           "fragments": 2}
    assert out["schedule"] == {"name": "constant", "lr": 0.1, "warmup_steps": 3}
    assert out["controller"] == {"name": "plateau", "patience": 3}
    assert config_from_mapping(yaml.safe_load(yaml.safe_dump(out))) == cfg


def test_sync_defaults_are_the_engine_defaults():
    """SyncConfig's option defaults are LocalSGD's (engine_options passes every option)."""
    import dataclasses
    import inspect

    from distsched.sync import LocalSGD
    from distsched.train import SyncConfig

    engine = inspect.signature(LocalSGD).parameters
    for key, value in SyncConfig().engine_options().items():
        assert value == engine[key].default or (key, value, engine[key].default) == ("compression", "none", None), key
    assert {f.name for f in dataclasses.fields(SyncConfig)} - {"name", "params"} == set(
        SyncConfig().engine_options()) - {"outer_optimizer"} | {"outer"}


@pytest.mark.parametrize("spec, every_step", [
    ({"name": "fixed", "h": 1}, True), ({"name": "fixed", "h": 2}, False),
    ({"name": "post_local", "h": 1}, False), ({"name": "qsr", "h_base": 1, "alpha": 0.1}, False),
    ({"name": "fixed", "h": 1, "fragments": 2}, True),
])
def test_sync_every_step(spec, every_step):
    from distsched.train import SyncConfig

    assert SyncConfig.from_spec(spec).every_step is every_step


def test_workers_range_in_yaml_is_a_range_not_base_60(tmp_path) -> None:
    """``workers: 1:2`` written as on the command line (``--workers 1:2``): YAML 1.1 reads an unquoted ``1:2``
    as the base-60 integer 62, so the config asked for 62 workers; read as the range (1, 2), in a file, in
    ``--set`` and back from ``config.yaml``. Other numbers read as PyYAML reads them."""
    import yaml

    from distsched.config import apply_sets, load_yaml
    from distsched.report import RunFolder
    from distsched.train.config import config_from_mapping

    text = "name: e\nworkers: 1:2\nsteps: 8\nbatch_size: 8\nschedule: {name: constant, lr: 0.1}\n"
    (tmp_path / "c.yaml").write_text(text)
    cfg = config_from_mapping(load_yaml(tmp_path / "c.yaml"))
    assert cfg.elastic == (1, 2) and cfg.workers == 2
    assert apply_sets({"workers": 1}, ["workers=1:2"])["workers"] == "1:2"
    folder = RunFolder.open(tmp_path / "run")
    folder.write_config({"workers": "1:2", "t": "0:30"})
    assert folder.read_config() == {"workers": "1:2", "t": "0:30"}
    from distsched.config import safe_load

    for doc in ("a: 62", "a: 0x1f", "a: 017", "a: 1_000", "a: 1.5e-3", "a: .inf", "a: [1, 2.5, true, null]"):
        assert repr(safe_load(doc)) == repr(yaml.safe_load(doc)), doc
