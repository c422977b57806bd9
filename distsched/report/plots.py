"""PNG line plots with matplotlib's Agg backend (no display needed).

Figures here are :class:`matplotlib.figure.Figure` objects, not pyplot's: nothing registers them globally (no
``plt.close``), ``savefig`` renders them with Agg whatever the backend, and ``matplotlib.pyplot`` (a second
of import with its backend machinery) is never loaded."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def line_plot(
    path: str | os.PathLike,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    logy: bool = False,
    step_style: bool = False,
) -> Path:
    """Draw each ``label -> (x, y)`` series on one axis and save a PNG; returns the path. Every plot has
    a title: without one, :func:`auto_title` makes it from the labels."""
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.subplots()
    for label, (x, y) in series.items():
        if step_style:
            ax.step(list(x), list(y), where="post", label=label)
        else:
            ax.plot(list(x), list(y), label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title or auto_title(series, xlabel=xlabel, ylabel=ylabel))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def auto_title(series: Mapping[str, object], *, xlabel: str = "step", ylabel: str = "") -> str:
    """``"test accuracy per round"``: the series' labels (or the y label when there are several), per x."""
    what = next(iter(series)) if len(series) == 1 else (ylabel or ", ".join(series))
    return f"{what} per {xlabel}" if xlabel else what
