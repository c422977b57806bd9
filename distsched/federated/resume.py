"""The config of a resumed simulation: the run's own ``config.yaml``, where only keys that cannot
change what was already computed may differ (:data:`SAFE_KEYS`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distsched.config import load_yaml, to_mapping
from distsched.federated.config import FedConfig, fed_config

#: keys a resume may change: how many rounds to run in all, how many actors run them (the results
#: do not depend on it), and where new runs would go
SAFE_KEYS = ("rounds", "num_actors", "output_dir")


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        return out
    return [] if a == b else [where]


def resume_config(run_dir: str | os.PathLike, given: Mapping[str, Any] | None,
                  overrides: Mapping[str, Any]) -> FedConfig:
    """The run's config with ``overrides`` (and the given config's values) applied to
    :data:`SAFE_KEYS` only; ValueError (one line) when ``given`` differs in any other key."""
    saved_path = Path(run_dir) / "config.yaml"
    if not saved_path.is_file():
        raise FileNotFoundError(f"not a simulation run folder (no config.yaml): {run_dir}")
    saved = to_mapping(fed_config(load_yaml(saved_path)))
    safe = {k: v for k, v in (given or {}).items() if k in SAFE_KEYS}
    if given is not None:
        theirs = to_mapping(fed_config({**dict(given), **{k: saved.get(k) for k in SAFE_KEYS if k in saved}}))
        changed = [d for d in _differences(saved, theirs) if d.split(".")[0] not in SAFE_KEYS]
        if changed:
            raise ValueError(f"the config differs from {saved_path} in {changed[0]!r}; a resume may change only "
                             f"{', '.join(SAFE_KEYS)} (or omit the config to use the run's own)")
    return fed_config({**saved, **safe, **{k: v for k, v in overrides.items() if k in SAFE_KEYS}})
