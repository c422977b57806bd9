"""distsched.config: typed configs from mappings, one-line errors naming the key; import paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from distsched._checks import check_int
from distsched.config import from_mapping, import_object, to_mapping


@dataclasses.dataclass
class _Sync:
    rule: str = "qsr"
    h_base: int = 4

    def __post_init__(self) -> None:
        check_int("h_base", self.h_base, 1)


@dataclasses.dataclass
class _Run:
    steps: int
    sync: _Sync = dataclasses.field(default_factory=_Sync)
    lr: float = 0.1
    tags: list[str] = dataclasses.field(default_factory=list)


def test_round_trip_and_int_to_float():
    cfg = from_mapping(_Run, {"steps": 3, "sync": {"h_base": 8}, "lr": 1, "tags": ["a"]})
    assert cfg == _Run(steps=3, sync=_Sync(h_base=8), lr=1.0, tags=["a"])
    assert from_mapping(_Run, to_mapping(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": 3, "sync": {"hbase": 8}}, r"unknown key sync\.hbase"),  # typo in a nested key
        ({"steps": "x"}, r"steps: expected an integer, got 'x'"),  # wrong type
        ({"steps": True}, r"steps: expected an integer"),  # bools are not integers
        ({}, r"missing required key steps"),
        ({"steps": 3, "sync": {"h_base": 0}}, r"sync\.h_base must be an integer >= 1, got 0"),  # range
        ({"steps": 3, "tags": "a"}, r"tags: expected a list"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        from_mapping(_Run, data)


def test_import_object_resolves_and_names_the_key():
    assert import_object("numpy:sqrt", "model.name") is np.sqrt
    with pytest.raises(ValueError, match=r"model\.name must be 'package\.module:function', got 'math\.sqrt'"):
        import_object("math.sqrt", "model.name")
    with pytest.raises(ValueError, match=r"model\.name: 'math:sqrt' is in the standard library"):
        import_object("math:sqrt", "model.name")
    with pytest.raises(ValueError, match=r"data\.factory: cannot import 'no_such_module_xyz:f'"):
        import_object("no_such_module_xyz:f", "data.factory")
    with pytest.raises(ValueError, match=r"data\.factory: cannot import 'numpy:nope'"):
        import_object("numpy:nope", "data.factory")


class _Rule:
    def __init__(self, h: int, damping: float = 0.5, strict: bool = False) -> None:
        if h < 1:
            raise ValueError(f"h must be >= 1, got {h}")
        self.h, self.damping, self.strict = h, damping, strict


@pytest.mark.parametrize(
    "spec, message",
    [
        ([1, 2], "rule must be a mapping with a 'name' key (one of: a, b), got [1, 2]"),
        ({"h": 2}, "rule needs a 'name' key (one of: a, b)"),
        ({"name": "c"}, "unknown rule 'c' in rule.name (known: a, b)"),
        ({"name": "a", "h": 2, "hh": 1}, "unknown key rule.hh for rule 'a' (allowed: damping, h, strict, x)"),
        ({"name": "a"}, "missing required key rule.h for rule 'a'"),
        ({"name": "a", "h": 2, "strict": "yes"}, "rule.strict: expected true or false, got 'yes'"),
        ({"name": "a", "h": 0}, "rule.h must be >= 1, got 0"),
    ],
)
def test_build_gives_one_line_errors_naming_the_block(spec, message):
    from distsched.config import build

    with pytest.raises(ValueError) as err:
        build({"a": _Rule, "b": _Rule}, spec, "rule", exclude=("x",))
    assert str(err.value) == message


def test_build_passes_the_parameters_and_leaves_excluded_keys():
    from distsched.config import build

    rule = build({"a": _Rule}, {"name": "a", "h": 3, "strict": True, "x": "for the caller"}, "rule", exclude=("x",))
    assert (rule.h, rule.damping, rule.strict) == (3, 0.5, True)


def _load_schedule(value, key):
    from distsched.schedules import from_spec

    return None if value is None else from_spec(value, _where=key)


def _job_cls():
    from distsched.config import spec_field
    from distsched.schedules import to_spec

    @dataclasses.dataclass
    class Job:
        steps: int = 1
        schedule: object = spec_field(_load_schedule, to_spec, default=None)

    return Job


def test_spec_field_reads_by_its_load_and_writes_the_spec_as_read():
    """A spec_field is read by its own load (errors name the key), written back verbatim while unchanged
    (also after dataclasses.replace of another field), and by its dump once changed."""
    from distsched import schedules as S

    job_cls = _job_cls()
    spec = {"name": "cosine", "total_steps": 10, "lr": 0.1, "warmup_steps": 2}
    job = from_mapping(job_cls, {"steps": 3, "schedule": spec}, prefix="job")
    assert job.schedule == S.warmup(S.cosine(lr=0.1, total_steps=10), warmup_steps=2)
    assert list(to_mapping(job)["schedule"].items()) == list(spec.items())  # keys, order, no defaults added
    assert to_mapping(dataclasses.replace(job, steps=4))["schedule"] == spec
    changed = dataclasses.replace(job, schedule=S.constant(0.2))
    assert to_mapping(changed)["schedule"] == {"name": "constant", "lr": 0.2}  # its dump: to_spec
    assert to_mapping(from_mapping(job_cls, {}))["schedule"] is None
    with pytest.raises(ValueError, match=r"^unknown key job\.schedule\.lrr for schedule 'constant'"):
        from_mapping(job_cls, {"schedule": {"name": "constant", "lrr": 0.1}}, prefix="job")
