"""from_spec / to_spec: configs build the same schedules as the constructors, and back."""

from __future__ import annotations

import pickle

import pytest

from distsched import schedules as S


def test_cosine_with_warmup_key_wraps_in_warmup():
    spec = {"name": "cosine", "lr": 0.1, "total_steps": 1000, "min_lr": 0.0, "warmup_steps": 50}
    got = S.from_spec(spec)
    assert got == S.Warmup(S.Cosine(lr=0.1, total_steps=1000, min_lr=0.0), warmup_steps=50)
    # step 50 is the first post-warmup step: the cosine's own step 0, its peak lr
    assert got(50) == 0.1
    assert got(0) == 0.0
    assert got(25) == pytest.approx(0.05, rel=1e-12)


def test_warmup_mode_and_start_factor_keys():
    spec = {"name": "constant", "lr": 0.2, "warmup_steps": 10, "warmup_mode": "exponential",
            "warmup_start_factor": 0.01}
    got = S.from_spec(spec)
    assert got == S.Warmup(S.Constant(0.2), warmup_steps=10, mode="exponential", start_factor=0.01)
    assert got(0) == pytest.approx(0.2 * 0.01, rel=1e-12)
    assert got(5) == pytest.approx(0.2 * 0.01**0.5, rel=1e-12)


def test_join_nested_specs_count_steps_from_boundary():
    spec = {
        "name": "join",
        "boundaries": [100],
        "schedules": [{"name": "constant", "lr": 0.1}, {"name": "cosine", "lr": 0.05, "total_steps": 10}],
    }
    got = S.from_spec(spec)
    assert got(99) == 0.1
    assert got(100) == 0.05  # the cosine's step 0
    assert got(110) == 0.0  # the cosine's step 10 = total_steps


def test_numeric_strings_from_yaml_are_accepted():
    import yaml

    spec = yaml.safe_load("name: cosine\nlr: 1e-1\ntotal_steps: 100\nmin_lr: 1e-4\n")
    assert isinstance(spec["lr"], str)  # YAML 1.1 reads 1e-1 as a string
    assert S.from_spec(spec) == S.Cosine(lr=0.1, total_steps=100, min_lr=1e-4)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"name": "cosin", "lr": 0.1, "total_steps": 10}, "cosin"),
        ({"name": "cosine", "lr": 0.1, "total_steps": 10, "eta_min": 0.0}, "eta_min"),
        ({"name": "cosine", "lr": 0.1}, "total_steps"),
        ({"lr": 0.1}, "name"),
        ({"name": "cosine", "lr": 0.1, "total_steps": -1}, "total_steps"),
        ({"name": "join", "boundaries": [5], "schedules": [{"name": "constant", "lr": 0.1}, {"name": "nope"}]},
         "nope"),
        ({"name": "constant", "lr": 0.1, "warmup_mode": "linear"}, "warmup_steps"),
    ],
)
def test_bad_specs_raise_naming_the_culprit(spec, named):
    with pytest.raises(ValueError, match=named):
        S.from_spec(spec)


def test_to_spec_round_trip_and_plain_values():
    import yaml

    scheds = [
        S.Warmup(S.Cosine(lr=0.1, total_steps=1000, min_lr=1e-4), warmup_steps=50),
        S.Warmup(S.Constant(0.3), warmup_steps=5, mode="exponential", start_factor=0.1),
        S.Join((S.Constant(0.1), S.Scale(S.Cosine(0.1, 50), 0.5)), (100,)),
        S.Clamp(S.Repeat(S.Cosine(0.1, 20), 20), min_lr=0.01),
        S.Warmup(S.Join((S.Constant(0.1), S.Constant(0.01)), (10,)), warmup_steps=3),
    ]
    for sched in scheds:
        spec = S.to_spec(sched)
        text = yaml.safe_dump(spec)  # plain YAML, as written to config.yaml
        back = S.from_spec(yaml.safe_load(text))
        assert back == sched
        assert pickle.loads(pickle.dumps(back)) == sched


def test_package_docstring_examples_run():
    import doctest

    import distsched.schedules

    result = doctest.testmod(distsched.schedules)
    assert result.attempted >= 2 and result.failed == 0


def test_nested_schedule_errors_name_the_full_key_path():
    """A nested schedule's unknown key is named by its full path, in the shared one-line form (issue 11,
    item 4); the old message said ``unknown key 'x' ... in schedule.schedules[1]``."""
    spec = {"name": "join", "boundaries": [5],
            "schedules": [{"name": "constant", "lr": 0.1}, {"name": "cosine", "lr": 0.1, "total_steps": 9, "x": 1}]}
    with pytest.raises(ValueError) as err:
        S.from_spec(spec)
    assert str(err.value) == ("unknown key schedule.schedules[1].x for schedule 'cosine' "
                              "(allowed: lr, min_lr, total_steps, warmup_mode, warmup_start_factor, warmup_steps)")
    spec["schedules"][1] = {"name": "nope"}
    with pytest.raises(ValueError, match=r"^unknown schedule 'nope' in schedule\.schedules\[1\]\.name \(known: "):
        S.from_spec(spec)
    with pytest.raises(ValueError, match=r"^missing required key schedule\.schedule\.total_steps for schedule"):
        S.from_spec({"name": "scale", "factor": 0.5, "schedule": {"name": "cosine", "lr": 0.1}})


def test_one_error_shape_across_the_four_block_kinds():
    """Sync rules, controllers, strategies and schedules share ``distsched.config.build``'s messages."""
    import re

    from distsched.federated.strategies import build_strategy
    from distsched.train import ControllerConfig, SyncConfig

    blocks = [
        (lambda extra: SyncConfig.from_spec({"name": "fixed", "h": 2, **extra}), "sync", "sync", "fixed"),
        (lambda extra: ControllerConfig.from_spec({"name": "plateau", **extra}), "controller", "controller", "plateau"),
        (lambda extra: build_strategy("fedavg", **extra), "strategy", "strategy.params", "fedavg"),
        (lambda extra: S.from_spec({"name": "constant", "lr": 0.1, **extra}), "schedule", "schedule", "constant"),
    ]
    for make, kind, at, name in blocks:
        with pytest.raises(ValueError) as err:
            make({"bogus": 1})
        assert re.fullmatch(rf"unknown key {re.escape(at)}\.bogus for {kind} '{name}' \(allowed: [a-z_, ]+\)",
                            str(err.value)), str(err.value)
