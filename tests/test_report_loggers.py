"""One logger interface: metrics.jsonl, TensorBoard event files (read back with TensorBoard's own
reader) and MLflow (read back with MLflow's client), for hand-written records and a real train run."""

from __future__ import annotations

import pytest
import torch

from distsched.report import MetricsWriter, read_metrics
from distsched.report.loggers import ENV, TensorBoardLogger, open_loggers, scalars


def _events(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_keep_finite_numbers_under_the_step_or_round():
    assert scalars({"step": 3, "lr": 0.1, "H": 4, "ok": True, "name": "x", "bad": float("nan"), "v": None}) == (
        3, {"lr": 0.1, "H": 4.0})
    assert scalars({"round": 7, "test_acc": 0.5}) == (7, {"test_acc": 0.5})
    assert scalars({"final": 1.0})[0] is None


def test_run_folder_metrics_open_in_tensorboard_and_resume_purges(tmp_path):
    run = tmp_path / "run"
    writer = MetricsWriter(run / "metrics.jsonl")
    for t in range(10, 60, 10):
        writer.write({"step": t, "lr": 0.1 / t, "loss": 1.0 / t, "H": t // 10})
    writer.close()
    ev = _events(run / "tensorboard")
    assert set(ev) == {"lr", "loss", "H"}
    assert ev["loss"] == [(t, pytest.approx(1.0 / t, rel=1e-6)) for t in range(10, 60, 10)]  # float32 in events

    resumed = MetricsWriter(run / "metrics.jsonl")  # a restart from the checkpoint at step 30
    resumed.truncate_after("step", 30)
    for t in (40, 50, 60):
        resumed.write({"step": t, "lr": 0.2, "loss": 2.0, "H": 9})
    resumed.close()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [10, 20, 30, 40, 50, 60]
    loss = _events(run / "tensorboard")["loss"]
    assert [s for s, _ in loss] == [10, 20, 30, 40, 50, 60]  # steps 40, 50 once: the old ones purged
    assert [v for s, v in loss if s > 30] == [2.0, 2.0, 2.0]


def test_other_paths_get_no_logger_and_names_are_checked(tmp_path, monkeypatch):
    assert MetricsWriter(tmp_path / "curve.jsonl").loggers == []
    assert [type(x) for x in open_loggers(tmp_path, [])] == [TensorBoardLogger]
    with pytest.raises(ValueError, match="unknown logger 'wandb'"):
        open_loggers(tmp_path, ["wandb"])
    monkeypatch.setenv(ENV, "tensorboard,neptune")
    with pytest.raises(ValueError, match=f"{ENV}: unknown logger 'neptune'"):
        open_loggers(tmp_path)


def test_mlflow_logger_when_named(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(ENV, "mlflow")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: fed\nclient: {lr: 0.05, batch_size: 10}\nrounds: 3\n")
    writer = MetricsWriter(run / "metrics.jsonl")
    for t in (1, 2, 3):
        writer.write({"round": t, "test_acc": 0.1 * t, "train_loss": 3.0 - t})
    writer.close()
    run_id = (run / "mlflow_run_id").read_text()
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert client.get_run(run_id).info.run_name == "run"
    assert client.get_run(run_id).data.params == {"name": "fed", "client.lr": "0.05", "client.batch_size": "10",
                                                  "rounds": "3"}
    again = MetricsWriter(run / "metrics.jsonl")  # a resume logs into the same MLflow run
    again.write({"round": 4, "test_acc": 0.4})
    again.close()
    assert len(client.get_metric_history(run_id, "test_acc")) == 4


def test_a_train_run_folder_opens_in_tensorboard(tmp_path):
    from distsched.train import LocalSession, config_from_mapping, prepare_run, train_worker

    torch.set_num_threads(1)
    cfg = config_from_mapping({
        "name": "tb", "seed": 0, "workers": 1, "steps": 40, "batch_size": 16, "log_every": 10,
        "model": {"name": "mlp", "hidden": [16]}, "data": {"name": "digits", "partition": "iid"},
        "optimizer": {"name": "sgd"}, "schedule": {"name": "cosine", "lr": 0.1, "total_steps": 40},
        "sync": {"rule": "fixed", "h": 2}, "checkpoint": {"every": 100, "keep": 1},
    })
    folder, cfg = prepare_run(cfg, run_dir=tmp_path / "tb")
    train_worker(cfg, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1, keep=1))
    records = [r for r in read_metrics(folder.metrics_path) if "step" in r]
    ev = _events(folder.root / "tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder.root / "tensorboard"))
    acc.Reload()
    assert "config/text_summary" in acc.Tags()["tensors"]  # the run's config.yaml in the Text tab
    for key in ("lr", "loss", "H", "bytes"):
        assert ev[key] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in records], key
