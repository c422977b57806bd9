"""Run output: metrics (JSONL/CSV) and loggers (TensorBoard, MLflow), the run folder, plots (PNG)."""

from distsched.report.loggers import Logger, MLflowLogger, TensorBoardLogger, open_loggers
from distsched.report.metrics import MetricsWriter, read_metrics
from distsched.report.plots import line_plot
from distsched.report.run_folder import RunFolder

__all__ = [
    "Logger",
    "MLflowLogger",
    "MetricsWriter",
    "RunFolder",
    "TensorBoardLogger",
    "line_plot",
    "open_loggers",
    "read_metrics",
]
