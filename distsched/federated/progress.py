"""What a simulation shows while it runs and draws when it ends: a progress bar and the plots."""

from __future__ import annotations

from typing import Any


class RoundProgress:
    """A rich progress bar with round, accuracy, loss and epsilon (silent when disabled)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self._bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
        )
        self._bar.start()
        self._task = self._bar.add_task("simulate", total=total, completed=done, status="")

    def update(self, rec: Any) -> None:
        if self._bar is None:
            return
        parts = [f"loss {rec.train_loss:.4f}"]
        if rec.test_acc is not None:
            parts.append(f"acc {rec.test_acc:.4f}")
        if rec.epsilon is not None:
            parts.append(f"eps {rec.epsilon:.3f}")
        self._bar.update(self._task, completed=rec.round, status="  ".join(parts))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def write_plots(folder: Any) -> None:
    """``plots/{accuracy,loss,participation}.png`` (and ``epsilon.png`` with DP) from ``metrics.jsonl``."""
    from distsched.report import line_plot, read_metrics

    recs = read_metrics(folder.metrics_path)
    if not recs:
        return

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["round"], r[key]) for r in recs if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    line_plot(
        folder.plots / "accuracy.png", {"test accuracy": series("test_acc")}, xlabel="round", ylabel="accuracy"
    )
    line_plot(
        folder.plots / "loss.png",
        {"train loss": series("train_loss"), "test loss": series("test_loss")},
        xlabel="round",
        ylabel="cross-entropy",
    )
    line_plot(
        folder.plots / "participation.png",
        {k: series(k) for k in ("sampled", "trained", "dropped", "late")},
        xlabel="round",
        ylabel="clients",
        step_style=True,
    )
    if any("epsilon" in r for r in recs):
        line_plot(folder.plots / "epsilon.png", {"epsilon": series("epsilon")}, xlabel="round", ylabel="epsilon")
