"""The three language-model examples, each on its own path at tiny sizes (the full runs are in the
README): DiLoCo with QSR on 2 real gloo processes, DP-SGD on one worker, FedAdam over the natural
clients (in-process rounds; on Ray in the slow test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distsched.train import LocalSession, config_from_mapping, prepare_run, train_worker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_MODEL = {"layers": 1, "heads": 2, "dim": 16}


def _example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _tiny_train(name: str, tmp_path, steps: int) -> dict:
    cfg = _example(name)
    cfg["steps"] = steps
    cfg["log_every"] = 2
    cfg["batch_size"] = 4
    cfg["model"]["kwargs"] = TINY_MODEL
    cfg["data"]["kwargs"] = {"context": 16, "val_windows": 16, "cache_dir": str(tmp_path / "cache")}
    cfg["schedule"] = {**cfg["schedule"], "total_steps": steps, "warmup_steps": 2}
    cfg["checkpoint"] = {"every": steps, "keep": 1}
    return cfg


def _check_lm_summary(summary: dict, run_dir: Path) -> None:
    corpus = json.loads((run_dir / "corpus.json").read_text())
    assert summary["corpus_sha256"] == corpus["sha256"] and len(corpus["files"]) > 200
    assert summary["test_bpb"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert 3.0 < summary["test_bpb"] < 8.5


def _diloco_cfg(tmp_path) -> dict:
    cfg = _tiny_train("lm_diloco.yaml", tmp_path, steps=12)
    cfg["sync"] = {**cfg["sync"], "h_base": 2, "alpha": 0.002 * 2**0.5, "h_max": 4}
    return cfg


def _one_label_per_window(input_shape, num_classes):
    """A classifier of whole windows: not a language model."""
    return torch.nn.Sequential(torch.nn.Embedding(256, 4), torch.nn.Flatten(),
                               torch.nn.Linear(input_shape[0] * 4, num_classes))


def test_preflight_runs_one_lm_batch(tmp_path):
    from distsched.train.run import preflight

    cfg = _diloco_cfg(tmp_path)
    assert preflight(config_from_mapping(cfg)) == 12
    bad = {**cfg, "model": {"name": f"{__name__}:_one_label_per_window"}}
    with pytest.raises(ValueError, match=r"expected \(batch, 16, 256\)"):
        preflight(config_from_mapping(bad))


def test_lm_diloco_one_worker(tmp_path):
    cfg = {**_diloco_cfg(tmp_path), "workers": 1}
    folder, tc = prepare_run(config_from_mapping(cfg), run_dir=tmp_path / "run")
    summary = train_worker(tc, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1))
    _check_lm_summary(summary, folder.root)
    records = [json.loads(line) for line in (folder.root / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["H"] == 2 and max(r["H"] for r in records) == 4  # QSR: H grows as the LR decays
    assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.slow
def test_lm_diloco_two_processes(tmp_path):
    from distsched.train.checkpoint import latest_checkpoint, load_rank_state
    from distsched.train.run import run_processes

    folder, tc = prepare_run(config_from_mapping(_diloco_cfg(tmp_path)), run_dir=tmp_path / "run")
    summary = run_processes(tc, folder)
    _check_lm_summary(summary, folder.root)
    assert summary["steps_done"] == 12 and 3 <= summary["sync_rounds"] <= 6
    records = [json.loads(line) for line in (folder.root / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["H"] == 2 and max(r["H"] for r in records) == 4  # QSR: H grows as the LR decays
    ranks = [load_rank_state(latest_checkpoint(folder.checkpoints), r)["model"] for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # the last step synced both workers


def test_lm_dp_one_worker(tmp_path):
    cfg = _tiny_train("lm_dp.yaml", tmp_path, steps=6)
    cfg["workers"] = 1
    folder, tc = prepare_run(config_from_mapping(cfg), run_dir=tmp_path / "run")
    session = LocalSession(folder.checkpoints, rank=0, world_size=1)
    summary = train_worker(tc, folder.root, session)
    _check_lm_summary(summary, folder.root)
    assert summary["steps_done"] == 6 and 0 < summary["epsilon"] <= 8.0 + 1e-9


def _tiny_fed(tmp_path, rounds: int = 2) -> dict:
    cfg = _example("fed_lm.yaml")
    cfg["rounds"] = rounds
    cfg["data"]["params"] = {"context": 16, "val_windows": 16, "cache_dir": str(tmp_path / "cache")}
    cfg["model"]["kwargs"] = TINY_MODEL
    cfg["client"]["local_work"] = 2
    cfg["sampling"]["cohort_size"] = 4
    cfg["eval_every"] = 1
    return cfg


def test_fed_lm_rounds_in_process(tmp_path):
    from distsched.federated.simulation import Simulation
    from distsched.federated.worker import ClientWorker, to_csr

    sim = Simulation(_tiny_fed(tmp_path))
    data = sim.data
    assert data.task == "lm" and sim.num_clients == len(data.natural_partition) > 50
    for part in sim.parts:  # a natural client is one top-level module: one group
        assert len(set(data.groups[part].tolist())) == 1
    sim.num_actors = 1
    order, offsets = to_csr(sim.parts)
    worker = ClientWorker(data.x_train, data.y_train, order, offsets, sim.model_spec, sim.local_work, 0)
    before = sim.params.clone()
    tasks, _ = sim.plan_round(0)
    delta, info = sim.combine(0, [worker.run(t, sim.params.numpy()) for t in tasks])
    assert np.isfinite(info["train_loss"]) and 4.0 < info["train_loss"] / math.log(2) < 8.5
    sim.params = sim.strategy.step(sim.params, torch.from_numpy(delta).float(), 0.003)
    assert not torch.equal(before, sim.params)


@pytest.mark.slow
def test_fed_lm_on_ray(ray_cluster, tmp_path):
    from distsched.cluster import ray_executor
    from distsched.federated.simulation import simulate

    summary = simulate(_tiny_fed(tmp_path), out_dir=tmp_path / "runs", executor=ray_executor(ray_cluster["address"]),
                       num_actors=1)
    run_dir = Path(summary["run_dir"])
    assert summary["rounds"] == 2 and summary["final_test_bpb"] == pytest.approx(
        summary["final_test_loss"] / math.log(2))
    assert summary["corpus_sha256"] == json.loads((run_dir / "corpus.json").read_text())["sha256"]
