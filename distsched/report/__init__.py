"""Run output: metrics (JSONL/CSV), the run folder, plots (PNG)."""

from distsched.report.metrics import MetricsWriter, read_metrics
from distsched.report.plots import line_plot
from distsched.report.run_folder import RunFolder

__all__ = ["MetricsWriter", "RunFolder", "line_plot", "read_metrics"]
