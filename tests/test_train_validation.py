"""Issue 12.6: the validation curve of train runs (``eval_every``): val_loss / val_accuracy of the
workers' averaged model on the test split, checked against an independent evaluation of the averaged
checkpoints; resumed runs write the same records; ``distsched diagnose`` calls a deliberately
overfitting run (tiny train split, wide model, many steps) overfitting and a healthy one not."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from distsched import cli
from distsched.data import evaluate
from distsched.report import read_metrics
from distsched.train import LocalSession, config_from_mapping, prepare_run, run_processes, train_worker
from distsched.train.checkpoint import complete_checkpoints, load_rank_state

BASE = {
    "name": "val", "seed": 3, "workers": 1, "steps": 60, "batch_size": 16, "log_every": 10, "eval_every": 10,
    "model": {"name": "mlp", "hidden": [16]}, "data": {"name": "digits"},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": 60}, "sync": {"rule": "fixed", "h": 4},
    "checkpoint": {"every": 20, "keep": 5},
}


def _run_one(mapping, run_dir):
    torch.set_num_threads(1)
    folder, cfg = prepare_run(config_from_mapping(mapping), run_dir=run_dir)
    summary = train_worker(cfg, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1, keep=5))
    return folder, summary


def _without_time(records):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


def test_eval_every_must_be_a_multiple_of_log_every():
    with pytest.raises(ValueError, match="eval_every must be a multiple of log_every 10"):
        config_from_mapping({**BASE, "eval_every": 15})
    assert config_from_mapping({k: v for k, v in BASE.items() if k != "eval_every"}).eval_every == 0  # off


def test_two_workers_validate_the_averaged_model(tmp_path):
    cfg = config_from_mapping({**BASE, "workers": 2, "steps": 30, "checkpoint": {"every": 10, "keep": 5},
                               "schedule": {"name": "cosine", "lr": 0.1, "total_steps": 30}})
    folder, cfg = prepare_run(cfg, run_dir=tmp_path / "two")
    summary = run_processes(cfg, folder)
    records = read_metrics(folder.metrics_path)
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    bundle = cfg.data.load(cfg.seed)
    ckpts = dict(complete_checkpoints(folder.checkpoints))
    rec10 = next(r for r in records if r["step"] == 10)
    # step 10 is not a sync step (H = 4): the replicas differ; the record is their average's evaluation
    states = [load_rank_state(ckpts[10], r)["model"] for r in range(2)]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])
    model = cfg.model.build(bundle.input_shape, bundle.num_classes)
    model.load_state_dict({k: (states[0][k].double() + states[1][k].double()).div(2).float() for k in states[0]})
    ref = evaluate(model, bundle.test, torch.device("cpu"))
    assert rec10["val_loss"] == pytest.approx(ref["test_loss"], rel=1e-6)
    assert rec10["val_accuracy"] == pytest.approx(ref["test_accuracy"], abs=1e-12)
    model.load_state_dict(states[0])
    assert evaluate(model, bundle.test, torch.device("cpu"))["test_loss"] != pytest.approx(rec10["val_loss"], rel=1e-6)
    # after the last step the replicas are synced: the average is the final model of the summary
    assert records[-1]["val_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)


def test_resumed_run_writes_the_same_validation_records(tmp_path):
    folder, summary = _run_one(BASE, tmp_path / "full")
    records = read_metrics(folder.metrics_path)
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30, 40, 50, 60]
    assert records[-1]["val_loss"] == pytest.approx(summary["test_loss"], rel=1e-9)
    copy = tmp_path / "copy"
    shutil.copytree(folder.root, copy)
    for step, ck in complete_checkpoints(copy / "checkpoints"):
        if step > 20:
            shutil.rmtree(ck)
    (copy / "summary.json").unlink()
    _, resumed = _run_one(BASE, copy)  # prepare_run on the existing folder: resumes from step 20
    assert resumed["resumed_from_step"] == 20
    assert _without_time(read_metrics(copy / "metrics.jsonl")) == _without_time(records)
    off, _ = _run_one({k: v for k, v in BASE.items() if k != "eval_every"}, tmp_path / "off")
    # validation changes no training state: the same losses without it
    assert [r["loss"] for r in read_metrics(off.metrics_path)] == [r["loss"] for r in records]


def _verdict(folder, capsys) -> str:
    assert cli.main(["diagnose", str(folder.root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "val='val_loss'" in out["evidence"][-1]
    return out["verdict"]


def test_diagnose_calls_overfitting_on_a_train_run(tmp_path, capsys):
    # 90 training images (test_fraction 0.95), a wide MLP, Adam at a constant LR for 400 steps
    overfit = {**BASE, "steps": 400, "batch_size": 32, "eval_every": 10, "model": {"name": "mlp", "hidden": [256, 256]},
               "data": {"name": "digits", "test_fraction": 0.95}, "optimizer": {"name": "adam"},
               "schedule": {"name": "constant", "lr": 0.003}, "sync": {"rule": "fixed", "h": 1},
               "checkpoint": {"every": 400, "keep": 1}}
    folder, _ = _run_one(overfit, tmp_path / "overfit")
    val = [r["val_loss"] for r in read_metrics(folder.metrics_path) if "val_loss" in r]
    assert val[-1] > 1.2 * min(val)  # ground truth: the held-out loss rose well above its minimum
    assert _verdict(folder, capsys) == "overfitting"
    healthy = {**BASE, "steps": 400, "schedule": {"name": "cosine", "lr": 0.1, "total_steps": 400},
               "checkpoint": {"every": 400, "keep": 1}}
    folder, summary = _run_one(healthy, tmp_path / "healthy")
    assert summary["test_accuracy"] > 0.9
    assert _verdict(folder, capsys) == "healthy"


def test_lm_run_logs_validation_bits_per_byte(tmp_path):
    import math
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "lm_diloco.yaml").read_text())
    cfg.update(workers=1, steps=8, log_every=2, eval_every=4, batch_size=4, checkpoint={"every": 8, "keep": 1})
    cfg["model"]["kwargs"] = {"layers": 1, "heads": 2, "dim": 16}
    cfg["data"]["kwargs"] = {"context": 16, "val_windows": 16, "cache_dir": str(tmp_path / "cache")}
    cfg["schedule"] = {**cfg["schedule"], "total_steps": 8, "warmup_steps": 2}
    folder, summary = _run_one(cfg, tmp_path / "lm")
    val = [r for r in read_metrics(folder.metrics_path) if "val_loss" in r]
    assert [r["step"] for r in val] == [4, 8]
    for r in val:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-12)
    assert val[-1]["val_bpb"] == pytest.approx(summary["test_bpb"], rel=1e-9)
