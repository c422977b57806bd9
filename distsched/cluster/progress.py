"""Driver-side progress while a run trains: follow ``metrics.jsonl`` (rank 0 appends one record per
``log_every`` steps) and show step, lr, H, loss, rounds and bytes.

In a terminal: a rich progress bar with the latest values; otherwise one plain line per record.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def format_record(r: dict[str, Any], total: int | None = None) -> str:
    step = f"{r.get('step')}/{total}" if total else f"{r.get('step')}"

    def num(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    line = (
        f"step {step}  lr {num('lr', '.4g')}  H {r.get('H', '-')}  loss {num('loss', '.4f')}  "
        f"rounds {r.get('rounds', '-')}  bytes {_bytes(r.get('bytes'))}"
    )
    line += f"  val loss {num('val_loss', '.4f')}" if "val_loss" in r else ""
    return line + (f"  epsilon {num('epsilon', '.3f')}" if "epsilon" in r else "")


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


class MetricsFollower(threading.Thread):
    """Polls a JSONL file and calls ``on_record`` for each new record (a truncation, as on resume,
    restarts from the top: steps already shown are skipped)."""

    def __init__(self, path: str | os.PathLike, on_record: Callable[[dict[str, Any]], None],
                 interval_s: float = 0.25, after_step: int = -1) -> None:
        super().__init__(daemon=True, name="distsched-progress")
        self.path = Path(path)
        self.on_record = on_record
        self.interval_s = interval_s
        self._halt = threading.Event()
        self._offset = 0
        self._last_step = after_step  # records up to this step were shown before (a resumed run)

    def poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size < self._offset:
            self._offset = 0
        with open(self.path, encoding="utf-8") as fh:
            fh.seek(self._offset)
            while True:
                line = fh.readline()
                if not line.endswith("\n"):
                    break
                self._offset += len(line.encode("utf-8"))
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                step = record.get("step", -1)
                if isinstance(step, (int, float)) and step > self._last_step:
                    self._last_step = int(step)
                    self.on_record(record)

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.poll()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
        self.poll()


COLUMNS = ("step", "lr", "H", "loss", "rounds", "bytes", "epoch", "time")


def _cells(r: dict[str, Any], total: int | None) -> list[str]:
    def num(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    step = f"{r.get('step', '-')}/{total}" if total else str(r.get("step", "-"))
    return [step, num("lr", ".4g"), str(r.get("H", "-")), num("loss", ".4f"), str(r.get("rounds", "-")),
            _bytes(r.get("bytes")), num("epoch", ".2f"), num("time_s", ".1f") + " s"]


class Progress:
    """Context manager showing a run's progress from its ``metrics.jsonl``: in a terminal a live
    progress bar over a table of the latest values, elsewhere one plain line per record."""

    def __init__(self, metrics_path: str | os.PathLike, total_steps: int | None, title: str = "train",
                 stream: TextIO | None = None, enabled: bool = True, start_step: int = 0) -> None:
        self.total = total_steps
        self.title = title
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self._live: Any = None
        self._bar: Any = None
        self._task: Any = None
        self._last: dict[str, Any] = {}
        self.follower = MetricsFollower(metrics_path, self._show, after_step=start_step)

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        dp = "epsilon" in self._last  # DP runs: the budget spent so far
        for name in COLUMNS + (("epsilon",) if dp else ()):
            table.add_column(name, justify="right")
        cells = _cells(self._last, self.total) if self._last else ["-"] * len(COLUMNS)
        if dp:
            eps = self._last.get("epsilon")
            cells.append(format(eps, ".3f") if isinstance(eps, (int, float)) else "-")
        table.add_row(*cells)
        return table

    def _render(self) -> Any:
        from rich.console import Group

        return Group(self._bar, self._table())

    def _show(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._last = record
        if self._live is not None:
            self._bar.update(self._task, completed=record.get("step", 0))
            self._live.update(self._render())
        else:
            print(format_record(record, self.total), file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        start_step = max(self.follower._last_step, 0)
        if self.enabled and self.stream.isatty():
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn(f"[bold]{self.title}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn())
            self._task = self._bar.add_task(self.title, total=self.total, completed=start_step)
            self._live = Live(self._render(), refresh_per_second=4, transient=False)
            self._live.start()
        self.follower.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.follower.stop()
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
