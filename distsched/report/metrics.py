"""Metrics as JSON lines: one object per step/round, append-only, truncatable on resume."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distsched.report.loggers import Logger

#: the file name that makes a folder a run folder: its records also go to the run's loggers
METRICS_FILE = "metrics.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class MetricsWriter:
    """Appends one JSON object per line to ``path``; flushed after every record. Each record also goes to
    ``loggers`` (:mod:`distsched.report.loggers`); by default, for a run folder's ``metrics.jsonl``, to
    the run's loggers (:func:`~distsched.report.loggers.open_loggers`: TensorBoard event files in
    ``RUN_DIR/tensorboard``, MLflow when named in ``$DISTSCHED_LOGGERS``), for any other path to none.

    ``truncate_after(key, value)`` drops records written past a checkpoint (``record[key] > value``),
    so that a resumed run never counts a step twice (in the loggers too).
    """

    def __init__(self, path: str | os.PathLike, loggers: Sequence[Logger] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if loggers is None and self.path.name == METRICS_FILE:
            from distsched.report.loggers import open_loggers

            loggers = open_loggers(self.path.parent)
        self.loggers: list[Logger] = list(loggers or [])
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def write(self, record: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._fh.flush()
        for logger in self.loggers:
            logger.log(record)

    def truncate_after(self, key: str, value: float) -> int:
        """Keep only records with ``record[key] <= value``; returns how many were kept."""
        self._fh.close()
        kept = [r for r in _records_before_a_crash(self.path) if key not in r or r[key] <= value]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in kept:
                fh.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        for logger in self.loggers:
            logger.truncate_after(key, value)
        return len(kept)

    def close(self) -> None:
        self._fh.close()
        for logger in self.loggers:
            logger.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` or a ``metrics.csv`` (numbers parsed back to float)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"metrics file not found: {path}")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [{k: _parse_number(v) for k, v in row.items()} for row in rows]
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({exc.msg})") from None
    return records


def _records_before_a_crash(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` whose writer may have been killed mid-record: a last line cut short
    (no newline, not JSON) is dropped with a one-line warning; any other damage is :func:`read_metrics`'s
    ValueError."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head, _, tail = text.rpartition("\n")
    if tail.strip():  # the last line has no newline: a record being written when the process died
        try:
            json.loads(tail)
        except json.JSONDecodeError:
            sys.stderr.write(f"distsched: warning: dropping the torn last record of {path} ({len(tail)} bytes "
                             "without a newline: the run stopped while writing it)\n")
            tmp = path.with_suffix(".torn.tmp")
            tmp.write_text(head + "\n" if head else "", encoding="utf-8")
            os.replace(tmp, path)
    return read_metrics(path) if path.exists() else []


def _parse_number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text
