"""plots/dashboard.png from metrics.jsonl, and ``distsched compare``, on run folders written as the
train loop and the simulation write them."""

from __future__ import annotations

import json

import pytest
import yaml

from distsched.cli import main
from distsched.report import MetricsWriter
from distsched.report.dashboard import compare, dashboard, dashboard_figure, load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train_run(root, dp: bool, scale: float = 1.0):
    root.mkdir(parents=True)
    config = {"name": root.name, "schedule": {"name": "cosine", "lr": 0.1, "total_steps": 100}}
    if dp:
        config["privacy"] = {"target_epsilon": 3.0, "delta": 1e-5}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    with MetricsWriter(root / "metrics.jsonl", loggers=[]) as w:
        for t in range(10, 110, 10):
            rec = {"step": t, "lr": 0.1 * (1 - t / 110), "H": 2 + t // 40, "loss": scale * 2.0 / t,
                   "rounds": t // 2, "bytes": 1000 * t}
            if t % 20 == 0:
                rec.update(val_loss=scale * 3.0 / t, val_accuracy=0.5 + t / 250)
            if dp:
                rec["epsilon"] = 0.027 * t
            w.write(rec)
    return root


def _fed_run(root):
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"name": "fed", "rounds": 5}))
    with MetricsWriter(root / "metrics.jsonl", loggers=[]) as w:
        for r in range(1, 6):
            w.write({"round": r, "client_lr": 0.05, "local_work": 1, "train_loss": 1.0 / r,
                     "test_loss": 1.2 / r, "test_acc": 0.5 + 0.08 * r, "sampled": 20})
    (root / "summary.json").write_text(json.dumps({"final_test_acc": 0.9}))
    return root


def test_dashboard_of_a_dp_train_run(tmp_path):
    run = _train_run(tmp_path / "dp", dp=True)
    fig = dashboard_figure(run)
    a_lr, a_loss, a_comm, a_eps, twin = fig.axes
    assert a_lr.get_title() == "learning rate and sync period H" and twin.get_ylabel().startswith("sync period H")
    assert list(twin.lines[0].get_xdata()) == list(range(10, 110, 10))  # H shares the LR's x axis
    assert [ln.get_label() for ln in a_loss.lines] == ["train", "validation"]
    assert list(a_loss.lines[1].get_xdata()) == list(range(20, 110, 20))
    assert a_comm.get_title() == "bytes sent per worker" and a_comm.lines[0].get_ydata()[-1] == 100_000
    assert a_eps.get_title() == "privacy budget"
    target = [ln for ln in a_eps.lines if ln.get_label() == "target 3"]
    assert target and list(target[0].get_ydata()) == [3.0, 3.0]
    assert fig._suptitle.get_text() == "dp"
    path = dashboard(run)
    assert path == run / "plots" / "dashboard.png" and path.read_bytes()[:8] == PNG_MAGIC


def test_dashboard_without_dp_shows_accuracy_and_federated_keys(tmp_path):
    fig = dashboard_figure(_train_run(tmp_path / "plain", dp=False))
    assert fig.axes[3].get_title() == "validation accuracy"
    plain = tmp_path / "plain" / "metrics.jsonl"
    plain.write_text("".join(line for line in plain.read_text().splitlines(True) if "val_accuracy" not in line))
    fig = dashboard_figure(tmp_path / "plain")
    assert fig.axes[3].get_title().startswith("sync rounds") and fig.axes[3].lines[0].get_ydata()[-1] == 45  # step 90
    fed = load_run(_fed_run(tmp_path / "fed"))
    assert fed.xlabel == "round" and fed.get("lr") == ([1, 2, 3, 4, 5], [0.05] * 5) and fed.get("bytes") is None
    fig = dashboard_figure(tmp_path / "fed")
    assert [ax.get_title() for ax in fig.axes[:4]] == [
        "learning rate and local work", "loss", "communication: no bytes logged", "test accuracy"]
    assert all(ax.get_xlabel() == "round" for ax in fig.axes[:4])


def test_compare_overlays_and_tabulates(tmp_path, capsys):
    a = _train_run(tmp_path / "a", dp=False)
    b = _train_run(tmp_path / "b", dp=True, scale=0.5)
    fed = _fed_run(tmp_path / "fed")
    path, rows = compare([a, b, fed], tmp_path / "cmp.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [r["run"] for r in rows] == ["a", "b", "fed"]
    assert rows[0]["final train loss"] == pytest.approx(0.02) and rows[1]["final train loss"] == pytest.approx(0.01)
    assert rows[1]["best val loss"] == pytest.approx(0.015) and rows[1]["epsilon"] == pytest.approx(2.7)
    assert rows[0]["bytes"] == 100_000 and rows[2]["bytes"] is None and rows[2]["final accuracy"] == pytest.approx(0.9)

    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c2.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["run", "step"] and out[1].startswith("a ") and out[2].startswith("b ")
    assert out[-1] == f"wrote {tmp_path / 'c2.png'}"
    assert main(["compare", str(a), "--json", "--out", str(tmp_path / "c3.png")]) == 0
    assert json.loads(capsys.readouterr().out.rsplit("wrote", 1)[0])[0]["run"] == "a"


def test_compare_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run folder not found" in err and not (tmp_path / "x.png").exists()


def test_every_plot_has_a_title_and_the_partition_plot_says_when_it_shows_a_subset():
    import numpy as np

    from distsched.data.partitions import partition_figure
    from distsched.report.plots import auto_title

    assert auto_title({"test accuracy": ([], [])}, xlabel="round") == "test accuracy per round"
    assert auto_title({"a": ([], []), "b": ([], [])}, xlabel="round", ylabel="clients") == "clients per round"
    labels = np.arange(400) % 4
    parts = [np.arange(i * 5, i * 5 + 5) for i in range(80)]
    fig = partition_figure(parts, labels, 4)
    assert [ax.get_title() for ax in fig.axes] == ["samples per client (all 80 clients)",
                                                   "label mix of the first 50 of 80 clients"]
    assert partition_figure(parts[:30], labels, 4).axes[1].get_title() == "label mix of all 30 clients"


@pytest.mark.parametrize("scheme", ["dirichlet", "iid"])
def test_the_partition_label_panel_draws_what_stacked_bars_draw(scheme):
    """One step patch per label (:func:`partition_figure`) against the reference, a bar per client and label
    stacked with ``Axes.bar``: the same axis limits, legend entries and pixels (legends left out: ``loc="best"``
    may place them differently)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from distsched.data.partitions import label_counts, make_partition, partition_figure

    labels = np.random.default_rng(0).integers(0, 10, 1500)
    parts = make_partition(scheme, labels, 500 if scheme == "iid" else 100, 0, alpha=0.5)
    fig = partition_figure(parts, labels, 10)
    ref = Figure(figsize=(11, 4), dpi=110)
    ref.subplots(1, 2)
    ref.axes[0].hist(label_counts(parts, labels, 10).sum(axis=1), bins=30)
    counts, bottom = label_counts(parts, labels, 10)[:50], np.zeros(50)
    for c in range(10):
        ref.axes[1].bar(np.arange(50), counts[:, c], bottom=bottom, width=1.0, label=str(c))
        bottom += counts[:, c]
    assert fig.axes[1].get_legend_handles_labels()[1] == ref.axes[1].get_legend_handles_labels()[1]
    fig.axes[1].get_legend().remove()
    assert fig.axes[1].get_xlim() == ref.axes[1].get_xlim() and fig.axes[1].get_ylim() == ref.axes[1].get_ylim()
    for ax, like in zip(ref.axes, fig.axes):
        ax.set(title=like.get_title(), xlabel=like.get_xlabel(), ylabel=like.get_ylabel())
    ref.subplots_adjust(**{k: getattr(fig.subplotpars, k) for k in ("left", "right", "bottom", "top", "wspace")})
    canvases = FigureCanvasAgg(fig), FigureCanvasAgg(ref)
    for canvas in canvases:
        canvas.draw()
    assert np.array_equal(np.asarray(canvases[0].buffer_rgba()), np.asarray(canvases[1].buffer_rgba()))
