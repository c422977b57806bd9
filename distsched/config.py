"""Typed configs: dataclasses built from YAML mappings, validated once at the edge.

``from_mapping(Cls, data)`` builds a (nested) dataclass and fails with one line naming the key
(``train.sync.h_base``) on an unknown key, a missing required key or a wrong type. Value ranges are
checked by the dataclasses' own ``__post_init__`` through :mod:`distsched._checks`. A field whose YAML
form is a spec with its own grammar (a schedule, a sync block) is declared with :func:`spec_field`: it is
read by its own ``load`` and written back by its own ``dump``.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without YAML 1.1's base-60 numbers: ``workers: 1:2`` is the range ``"1:2"`` (as
    ``--workers 1:2``), not the integer 62; ``1:30.5`` is a string, not 90.5. Everything else is unchanged."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(  # PyYAML's int pattern less its last (base-60) alternative
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver(  # PyYAML's float pattern less its base-60 alternative
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` without base-60 numbers (:class:`_Loader`): every config, ``config.yaml`` and
    ``--set`` value is read with it."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file's top-level mapping, with one-line errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.is_dir():
        raise ValueError(f"config must be a YAML file, got the directory {path}")
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def import_object(path: str, key: str) -> Any:
    """The object named ``"package.module:attr"`` in a config (a model or data factory); errors are one
    line naming the config ``key``.

    A config is code: importing and calling a factory runs whatever it names, as Hydra's
    ``_target_`` does. Standard-library modules (``os:system``, ``subprocess:run``...) are refused,
    since no model or data factory lives there and they are the first tools of a hostile config.
    """
    module_name, sep, attr = path.partition(":")
    if not (sep and module_name and attr):
        raise ValueError(f"{key} must be 'package.module:function', got {path!r}")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        raise ValueError(f"{key}: {path!r} is in the standard library; a factory must come from your own package")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{key}: cannot import {path!r} ({exc})") from None


def check_kwargs(fn: Any, kwargs: Mapping[str, Any], key: str) -> None:
    """Refuse (one line naming ``key``) keyword arguments that ``fn`` does not take."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no introspectable signature: leave it to the call
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{key}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def is_import_path(name: str) -> bool:
    """``"package.module:attribute"``."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr and all(part.isidentifier() for part in module.split(".")))


def check_name(key: str, name: str, builtins: tuple[str, ...]) -> str:
    """``name`` if it is one of ``builtins`` or an import path (a user factory), else a one-line error."""
    if name in builtins or is_import_path(name):
        return name
    allowed = ", ".join(repr(b) for b in builtins)
    raise ValueError(f"{key} must be one of {allowed} or an import path 'package.module:factory', got {name!r}")


def build(
    registry: Mapping[str, Callable[..., T]],
    spec: Any,
    where: str,
    *,
    exclude: Sequence[str] = (),
    fixed: Sequence[str] = (),
    at: str | None = None,
    kind: str | None = None,
    convert: Callable[[str, Any], Any] | None = None,
) -> T:
    """The block ``spec = {name: <registry key>, <parameters>}`` built as ``registry[name](**parameters)``.

    One set of one-line errors, each naming ``where`` (``sync``, ``controller``, ``strategy``...): not a
    mapping, no ``name``, an unknown name, an unknown or missing parameter, a flag that is not
    true/false, and the constructor's own ``ValueError`` (prefixed ``where.``). ``exclude``: keys of
    the block that are not the constructor's (read by the caller); ``fixed``: constructor parameters
    the config may not set; ``at``: where the parameters sit when not beside ``name`` (errors then name
    ``<at>.<key>``, e.g. ``strategy.params.mu``); ``kind``: what the block is, when ``where`` is a path
    (a nested schedule at ``schedule.schedules[0]`` is a ``schedule``); ``convert(key, value)``: each
    parameter's value as the constructor takes it, after the checks (its errors pass through as raised).
    """
    at = at or where
    kind = kind or where
    known = ", ".join(sorted(registry))
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping with a 'name' key (one of: {known}), got {spec!r}")
    if "name" not in spec:
        raise ValueError(f"{where} needs a 'name' key (one of: {known})")
    name = spec["name"]
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r} in {where}.name (known: {known})")
    factory = registry[name]
    params = {n: p for n, p in inspect.signature(factory).parameters.items()
              if n != "self" and n not in fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    kwargs = {k: v for k, v in spec.items() if k != "name" and k not in exclude}
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        allowed = ", ".join(sorted([*params, *exclude])) or "none"
        raise ValueError(f"unknown key {at}.{unknown[0]} for {kind} {name!r} (allowed: {allowed})")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ValueError(f"missing required key {at}.{missing[0]} for {kind} {name!r}")
    for k, v in kwargs.items():
        if isinstance(params[k].default, bool) and not isinstance(v, bool):
            raise ValueError(f"{at}.{k}: expected true or false, got {v!r}")
    if convert is not None:
        kwargs = {k: convert(k, v) for k, v in kwargs.items()}
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        msg = str(exc)  # a constructor that already names the key keeps its message
        raise ValueError(msg if msg.startswith(f"{at}.") else f"{at}.{msg}") from None


def spec_field(load: Callable[[Any, str], Any], dump: Callable[[Any], Any], **field_options: Any) -> Any:
    """A dataclass field whose YAML form is a spec with its own grammar (``{name: cosine, ...}``).

    :func:`from_mapping` reads it with ``load(value, key)`` (its one-line errors name ``key``; ``load``
    also takes ``None`` and an already typed value) and :func:`to_mapping` writes it with ``dump(value)``.
    The object read remembers its spec: while it is unchanged (equal to what was read), :func:`to_mapping`
    writes that spec back verbatim (the user's keys, order and spelling, not every default), so a run
    folder's ``config.yaml`` shows what was written, also after :func:`dataclasses.replace` of another
    field. ``field_options`` go to :func:`dataclasses.field` (``default``, ``default_factory``...).
    """
    return dataclasses.field(metadata={"load": load, "dump": dump}, **field_options)


#: attribute of an object read by a :func:`spec_field`'s ``load``: ``(spec as read, copy of the object)``.
_AS_READ = "_spec_as_read"


def _remember_spec(value: Any, spec: Any) -> None:
    if value is None or value is spec:  # nothing read, or a typed object given as is
        return
    try:
        object.__setattr__(value, _AS_READ, (copy.deepcopy(spec), copy.deepcopy(value)))
    except AttributeError:  # no __dict__ (slots): written by its dump
        pass


def _field_type(cls: type, f: dataclasses.Field) -> Any:
    """``f``'s annotation, evaluated in ``cls``'s module as :func:`typing.get_type_hints` does, one field at a
    time (a :func:`spec_field` may be annotated with a class imported only for type checking)."""
    if not isinstance(f.type, str):
        return f.type
    return typing.get_type_hints(type("_F", (), {"__annotations__": {f.name: f.type},
                                                  "__module__": cls.__module__}))[f.name]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return from_mapping(tp, value, prefix=key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ValueError(f"{key}: must be one of {allowed}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys, missing keys and wrong types raise
    ``ValueError`` naming the dotted key."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = (prefix + ".") if prefix else ""
    unknown = [k for k in data if k not in fields]
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ValueError(f"unknown key {dotted}{unknown[0]} (allowed: {allowed})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            load = f.metadata.get("load")
            key = f"{dotted}{name}"
            if load:
                kwargs[name] = load(data[name], key)
                _remember_spec(kwargs[name], data[name])
            else:
                kwargs[name] = _coerce(data[name], _field_type(cls, f), key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing required key {dotted}{name}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(f"{dotted}{msg}" if prefix and not msg.startswith(prefix) else msg) from None


def to_mapping(obj: Any) -> Any:
    """A dataclass (nested) back to plain dicts/lists, for ``config.yaml`` in the run folder; a
    :func:`spec_field` is written as its spec (verbatim as read, while it holds the value read)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _field_to_mapping(obj, f) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


def _field_to_mapping(obj: Any, f: dataclasses.Field) -> Any:
    value = getattr(obj, f.name)
    if "dump" not in f.metadata or value is None:
        return to_mapping(value)
    spec, read = getattr(value, _AS_READ, (None, None))
    return copy.deepcopy(spec) if spec is not None and value == read else f.metadata["dump"](value)


def parse_sets(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``["optimizer.momentum=0.9", "sync={rule: fixed, h: 4}"]`` -> ``[(dotted key, value)]``, each value
    read with ``yaml.safe_load`` (so ``0.05``, ``[64, 64]``, ``{name: constant, lr: 0.1}``, ``true``)."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set must be KEY.PATH=VALUE, got {item!r}")
        try:
            out.append((key, safe_load(text)))
        except yaml.YAMLError:
            raise ValueError(f"--set {key}: cannot read value {text!r} as YAML") from None
    return out


def apply_sets(data: Mapping[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """A copy of the config mapping ``data`` with each ``--set KEY.PATH=VALUE`` applied (missing
    intermediate mappings are created; the typed config then refuses keys it does not know)."""
    out = copy.deepcopy(dict(data))
    for key, value in parse_sets(items):
        parts = key.split(".")
        node: dict[str, Any] = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ValueError(f"--set {key}: {where} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return out
