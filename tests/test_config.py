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
