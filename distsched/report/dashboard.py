"""One figure per run, ``plots/dashboard.png``, and the overlay of several runs (``distsched compare``),
built from ``metrics.jsonl`` (train: ``step``, ``lr``, ``H``, ``loss``, ``val_loss``, ``bytes``;
simulate: ``round``, ``client_lr``, ``local_work``, ``train_loss``, ``test_loss``, ``test_acc``) and the
run's ``config.yaml`` (the epsilon target: ``privacy.target_epsilon`` or ``dp.target_epsilon``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from distsched.report.metrics import METRICS_FILE, read_metrics

#: the roles of the dashboard and their keys, train run first, federated run second
KEYS: dict[str, tuple[str, ...]] = {
    "x": ("step", "round"),
    "lr": ("lr", "client_lr"),
    "H": ("H", "local_work"),
    "train_loss": ("loss", "train_loss"),
    "val_loss": ("val_loss", "test_loss"),
    "accuracy": ("val_accuracy", "test_acc", "test_accuracy"),
    "bytes": ("bytes",),
    "epsilon": ("epsilon",),
    "rounds": ("rounds", "trained"),
}


@dataclasses.dataclass
class RunCurves:
    """A run's curves by role (``None`` where the run did not log it)."""

    name: str
    xlabel: str
    series: dict[str, tuple[list[float], list[float]]]
    target_epsilon: float | None
    summary: dict[str, Any]

    def get(self, role: str) -> tuple[list[float], list[float]] | None:
        return self.series.get(role)


def _first_key(records: Sequence[Mapping[str, Any]], role: str) -> str | None:
    return next((k for k in KEYS[role] if any(r.get(k) is not None for r in records)), None)


def load_run(run_dir: str | os.PathLike) -> RunCurves:
    """The curves of the run folder ``run_dir`` (FileNotFoundError without a ``metrics.jsonl``)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder not found: {root}")
    records = read_metrics(root / METRICS_FILE)
    xkey = _first_key(records, "x")
    if xkey is None:
        raise ValueError(f"{root / METRICS_FILE} has no record with a 'step' or 'round'")
    records = [r for r in records if r.get(xkey) is not None]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for role in KEYS:
        key = _first_key(records, role) if role != "x" else None
        if key is None:
            continue
        pts = [(float(r[xkey]), float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
        series[role] = ([p[0] for p in pts], [p[1] for p in pts])
    config: dict[str, Any] = {}
    if (root / "config.yaml").exists():
        config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8")) or {}
    block = config.get("privacy") or config.get("dp") or {}
    target = block.get("target_epsilon") if isinstance(block, Mapping) else None
    summary: dict[str, Any] = {}
    if (root / "summary.json").exists():
        import json

        summary = json.loads((root / "summary.json").read_text(encoding="utf-8"))
    return RunCurves(root.name, xkey, series, float(target) if target is not None else None, summary)


def dashboard(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path:
    """Write ``RUN_DIR/plots/dashboard.png`` (or ``path``): see :func:`dashboard_figure`. Returns the path."""
    out = Path(path) if path is not None else Path(run_dir) / "plots" / "dashboard.png"
    fig = dashboard_figure(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def dashboard_figure(run_dir: str | os.PathLike) -> Any:
    """The dashboard's matplotlib figure, four panels: LR and H on twin axes (client LR and local work for
    a federated run), train/val loss, bytes sent, and with DP epsilon with its target line (accuracy
    otherwise, else the sync rounds). A pyplot-free ``Figure`` (see :mod:`distsched.report.plots`)."""
    from matplotlib.figure import Figure

    run = load_run(run_dir)
    fig = Figure(figsize=(11, 7), dpi=110)
    axes = fig.subplots(2, 2)
    (a_lr, a_loss), (a_comm, a_last) = axes
    federated = run.xlabel == "round"

    if run.get("lr"):
        a_lr.plot(*run.get("lr"), color="tab:blue", label="client lr" if federated else "lr")
    a_lr.set_ylabel("client lr" if federated else "learning rate", color="tab:blue")
    if run.get("H"):
        twin = a_lr.twinx()
        twin.step(*run.get("H"), where="post", color="tab:orange", label="local work" if federated else "H")
        twin.set_ylabel("local work per round" if federated else "sync period H (local steps)", color="tab:orange")
        twin.set_ylim(bottom=0, top=max(run.get("H")[1]) * 1.1)
    a_lr.set_title("learning rate and local work" if federated else "learning rate and sync period H")

    for role, label in (("train_loss", "train"), ("val_loss", "test" if federated else "validation")):
        if run.get(role):
            a_loss.plot(*run.get(role), label=label)
    a_loss.set_title("loss")
    a_loss.set_ylabel("cross-entropy")
    if run.get("train_loss") or run.get("val_loss"):
        a_loss.legend()

    if run.get("bytes"):
        a_comm.plot(*run.get("bytes"), color="tab:green")
        a_comm.set_title("bytes sent per worker")
        a_comm.set_ylabel("bytes")
    else:
        a_comm.set_title("communication: not logged" if not federated else "communication: no bytes logged")
        a_comm.text(0.5, 0.5, "no 'bytes' in metrics.jsonl", ha="center", va="center", transform=a_comm.transAxes)

    if run.get("epsilon"):
        a_last.plot(*run.get("epsilon"), color="tab:red", label="epsilon spent")
        if run.target_epsilon is not None:
            a_last.axhline(run.target_epsilon, color="black", linestyle="--", label=f"target {run.target_epsilon:g}")
        a_last.set_title("privacy budget")
        a_last.set_ylabel("epsilon")
        a_last.legend()
    elif run.get("accuracy"):
        a_last.plot(*run.get("accuracy"), color="tab:purple")
        a_last.set_title("test accuracy" if federated else "validation accuracy")
        a_last.set_ylabel("accuracy")
    elif run.get("rounds"):
        a_last.plot(*run.get("rounds"), color="tab:gray")
        a_last.set_title("clients trained per round" if federated else "sync rounds (no DP, no accuracy logged)")
        a_last.set_ylabel("clients" if federated else "rounds")
    else:
        a_last.set_title("no DP, no accuracy logged")

    for ax in axes.flat:
        ax.set_xlabel(run.xlabel)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name}")
    fig.tight_layout()
    return fig


def _last(series: tuple[list[float], list[float]] | None) -> float | None:
    return series[1][-1] if series and series[1] else None


def summary_row(run: RunCurves) -> dict[str, Any]:
    """One row of the comparison table: where the run got to and at what cost."""
    val = run.get("val_loss")
    return {
        "run": run.name,
        run.xlabel: int(run.get("train_loss")[0][-1]) if run.get("train_loss") else None,
        "final train loss": _last(run.get("train_loss")),
        "best val loss": min(val[1]) if val and val[1] else None,
        "final accuracy": _last(run.get("accuracy"))
        if run.get("accuracy") else run.summary.get("test_accuracy", run.summary.get("final_test_acc")),
        "bytes": _last(run.get("bytes")),
        "epsilon": _last(run.get("epsilon")),
    }


def compare(run_dirs: Sequence[str | os.PathLike], path: str | os.PathLike) -> tuple[Path, list[dict[str, Any]]]:
    """Overlay the runs' training loss against step (or round) and against bytes sent; returns the PNG's
    path and one :func:`summary_row` per run."""
    from matplotlib.figure import Figure

    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder names under different parents: show the parents
        for r, d in zip(runs, run_dirs):
            r.name = str(Path(d))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(12, 4.5), dpi=110)
    a_step, a_bytes = fig.subplots(1, 2)
    for r in runs:
        loss = r.get("train_loss")
        if loss:
            a_step.plot(*loss, label=r.name)
        if loss and r.get("bytes"):
            by_x = dict(zip(*r.get("bytes")))
            pts = [(by_x[x], y) for x, y in zip(*loss) if x in by_x]
            a_bytes.plot([p[0] for p in pts], [p[1] for p in pts], label=r.name)
    xlabels = sorted({r.xlabel for r in runs})
    a_step.set_xlabel(" / ".join(xlabels))
    a_step.set_title("training loss vs " + " / ".join(xlabels))
    a_bytes.set_xlabel("bytes sent per worker")
    a_bytes.set_title("training loss vs bytes sent" + ("" if any(r.get("bytes") for r in runs) else " (none logged)"))
    for ax in (a_step, a_bytes):
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"{len(runs)} runs")
    fig.tight_layout()
    fig.savefig(out)
    return out, [summary_row(r) for r in runs]
