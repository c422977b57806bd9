"""One logger interface for every run: the JSON lines of ``metrics.jsonl`` (always), TensorBoard event
files (``torch.utils.tensorboard``) and MLflow (when ``mlflow`` is importable).

A logger takes the same records as ``metrics.jsonl`` (one mapping per step or round) and logs every
numeric value under its key, at ``record["step"]`` (train) or ``record["round"]`` (simulate). On a
resume, ``truncate_after(key, value)`` drops what was logged past the checkpoint, as the JSONL file does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: logger names for ``--logger`` (JSONL is always written)
LOGGERS = ("tensorboard", "mlflow")
#: environment variable naming extra loggers, comma separated (``distsched train --logger mlflow`` sets
#: it, so that rank 0's process, wherever it runs, opens the same loggers)
ENV = "DISTSCHED_LOGGERS"
STEP_KEYS = ("step", "round")


@runtime_checkable
class Logger(Protocol):
    """What every logger does: log a record, forget what follows a checkpoint, close."""

    def log(self, record: Mapping[str, Any]) -> None: ...

    def truncate_after(self, key: str, value: float) -> None: ...

    def close(self) -> None: ...


def flat_config(run_dir: str | os.PathLike) -> dict[str, str]:
    """The run's ``config.yaml`` flattened to ``{"schedule.lr": "0.1", ...}`` (empty without one)."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(value)

    walk("", yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    return out


def scalars(record: Mapping[str, Any]) -> tuple[int | None, dict[str, float]]:
    """``(step, {key: value})``: the record's step (``step`` or ``round``) and its finite numbers."""
    step = next((int(record[k]) for k in STEP_KEYS if isinstance(record.get(k), (int, float))), None)
    values = {
        k: float(v) for k, v in record.items()
        if k not in STEP_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    return step, values


class TensorBoardLogger:
    """Event files in ``log_dir`` (``tensorboard --logdir RUN_DIR``), one scalar per key and step."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self._writer_cls = SummaryWriter
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        config = self.log_dir.parent / "config.yaml"
        if config.exists():  # the run's config in TensorBoard's Text tab
            self._writer.add_text("config", "```\n" + config.read_text(encoding="utf-8") + "\n```", global_step=0)

    def log(self, record: Mapping[str, Any]) -> None:
        step, values = scalars(record)
        if step is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(key, value, global_step=step)
        self._writer.flush()

    def truncate_after(self, key: str, value: float) -> None:
        """A new event file whose ``purge_step`` hides the events past ``value`` (TensorBoard's resume)."""
        self._writer.close()
        self._writer = self._writer_cls(log_dir=str(self.log_dir), purge_step=int(value) + 1)

    def close(self) -> None:
        self._writer.close()


class MLflowLogger:
    """An MLflow run named after the run folder; reopened (same run id) when the run resumes.

    Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else a file store in ``RUN_DIR/mlruns``.
    """

    def __init__(self, run_dir: str | os.PathLike, experiment: str = "distsched") -> None:
        try:
            import mlflow
        except ImportError:
            raise ValueError("--logger mlflow needs mlflow: pip install mlflow (or mlflow-skinny)") from None
        self._mlflow = mlflow
        root = Path(run_dir)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # a local file store, as in MLflow 2
            mlflow.set_tracking_uri((root / "mlruns").resolve().as_uri())
        mlflow.set_experiment(experiment)
        id_file = root / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else root.name)
        id_file.write_text(self.run.info.run_id)
        if run_id is None:  # the config as the run's parameters (MLflow caps a value at 6000 characters)
            params = {k: v[:6000] for k, v in flat_config(root).items()}
            for i in range(0, len(params), 100):
                mlflow.log_params(dict(list(params.items())[i : i + 100]))

    def log(self, record: Mapping[str, Any]) -> None:
        step, values = scalars(record)
        if step is not None and values:
            self._mlflow.log_metrics(values, step=step)

    def truncate_after(self, key: str, value: float) -> None:
        """MLflow keeps every logged point; the resumed run logs the repeated steps again."""

    def close(self) -> None:
        self._mlflow.end_run()


def names_from_env() -> list[str]:
    """The extra loggers named in ``$DISTSCHED_LOGGERS``, checked."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    for n in names:
        if n not in LOGGERS:
            raise ValueError(f"{ENV}: unknown logger {n!r} (known: {', '.join(LOGGERS)})")
    return names


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def open_loggers(run_dir: str | os.PathLike, names: Sequence[str] | None = None) -> list[Logger]:
    """The loggers of a run folder: TensorBoard in ``RUN_DIR/tensorboard`` (whenever tensorboard is
    installed) and MLflow if named (``names``, default ``$DISTSCHED_LOGGERS``)."""
    wanted = list(names_from_env() if names is None else names)
    for n in wanted:
        if n not in LOGGERS:
            raise ValueError(f"unknown logger {n!r} (known: {', '.join(LOGGERS)})")
    out: list[Logger] = []
    if tensorboard_available():
        out.append(TensorBoardLogger(Path(run_dir) / "tensorboard"))
    elif "tensorboard" in wanted:
        raise ValueError("--logger tensorboard needs tensorboard: pip install tensorboard")
    if "mlflow" in wanted:
        out.append(MLflowLogger(run_dir))
    return out
