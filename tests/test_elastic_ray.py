"""The elastic Ray Train worker group (issue 14, item 4): ``workers: [min, max]`` / ``--workers MIN:MAX``.

Fast: the ``workers`` spec (config and CLI: bad specs are one line, exit 2, nothing written), the slot
count, the size choice, the settling of a count, the resize history kept across rollbacks.
Slow (real Ray, real process groups): a run with ``workers: [1, 2]`` loses rank 1 (SIGKILL) while a real Ray
actor takes the CPU it leaves, finishes at 1 worker until the CPU comes back, grows to 2 again, and ends
with the same parameters, bit for bit, as an independent reference: a run without Ray (``--launcher
processes``) resized by hand with ``--resume --workers`` at the steps the elastic run recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from distsched.cli import main
from distsched.cluster.elastic import _annotate, group_size, settled_slots, slots
from distsched.cluster.trainer import read_resizes, record_resize
from distsched.report import RunFolder
from distsched.train import config_from_mapping, config_to_mapping
from distsched.train.checkpoint import checkpoint_name, load_rank_state, write_meta
from distsched.train.config import parse_workers

STEPS = 400
CFG = {
    "name": "elastic", "seed": 3, "workers": [1, 2], "steps": STEPS, "batch_size": 16, "log_every": 10,
    "model": {"name": "mlp", "hidden": [32]}, "data": {"name": "digits"},
    "optimizer": {"name": "sgd", "momentum": 0.9}, "world_lr": "linear",
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS},
    "sync": {"name": "fixed", "h": 4},  # steps between syncs: the ranks' models differ at a checkpoint
    "checkpoint": {"every": 20, "keep": 50},
}
KILL_AT = 60  # rank 1 kills itself before step 60 (0-based), right after the checkpoint of step 60


# ---------------------------------------------------------------------------------------- the spec
@pytest.mark.parametrize(("spec", "want"), [
    (3, (3, None)), ("3", (3, None)), ([1, 2], (2, (1, 2))), ("2:4", (4, (2, 4))), ([2, 2], (2, None)),
    ("1:1", (1, None)),
])
def test_workers_spec(spec, want) -> None:
    assert parse_workers(spec) == want


@pytest.mark.parametrize("spec", ["3:2", "0:2", "a:b", "2:", ":2", [2, 1], [0, 1], [1, 2, 3], 0, True, [1.0, 2]])
def test_bad_workers_spec(spec) -> None:
    with pytest.raises(ValueError, match="workers must be"):
        parse_workers(spec)


def test_elastic_config_round_trip_and_refusals() -> None:
    cfg = config_from_mapping(CFG)
    assert (cfg.workers, cfg.elastic) == (2, (1, 2))
    assert config_to_mapping(cfg)["workers"] == [1, 2] and "elastic" not in config_to_mapping(cfg)
    assert config_from_mapping(config_to_mapping(cfg)).elastic == (1, 2)
    import dataclasses

    assert dataclasses.replace(cfg, workers=1).elastic is None  # one segment's fixed-size config
    with pytest.raises(ValueError, match="needs steps"):
        config_from_mapping({**{k: v for k, v in CFG.items() if k != "steps"}, "epochs": 1})
    with pytest.raises(ValueError, match="delay"):
        config_from_mapping({**CFG, "sync": {"name": "fixed", "h": 4, "delay": 1}})
    with pytest.raises(ValueError, match="local mode"):
        config_from_mapping({**CFG, "privacy": {"noise_multiplier": 1.0, "delta": 1e-5, "mode": "local"}})


def _one_line(capsys: pytest.CaptureFixture, argv: list[str], needle: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err, err


@pytest.mark.parametrize("spec", ["3:2", "0:2", "a:b", "0", "-1"])
def test_cli_bad_workers_spec_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, spec: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CFG), encoding="utf-8")
    out = tmp_path / "runs"
    _one_line(capsys, ["train", str(path), f"--workers={spec}", "--out", str(out)], "--workers must be N or MIN:MAX")
    assert not out.exists()


def test_cli_elastic_needs_ray(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CFG), encoding="utf-8")
    out = tmp_path / "runs"
    _one_line(capsys, ["train", str(path), "--launcher", "processes", "--out", str(out)], "needs the Ray launcher")
    _one_line(capsys, ["train", str(path), "--workers", "1:2", "--launcher", "processes", "--out", str(out)],
              "needs the Ray launcher")
    assert not out.exists()


# ---------------------------------------------------------------------------------------- the driver
def test_slots_count_the_scarcest_resource() -> None:
    assert slots({"CPU": 3.0, "GPU": 1.0}, {"CPU": 1.0}) == 3
    assert slots({"CPU": 3.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}) == 1
    assert slots({"CPU": 0.9999999999}, {"CPU": 1.0}) == 1  # Ray's float sums
    assert slots({}, {"CPU": 1.0}) == 0
    with pytest.raises(ValueError, match="needs some resource"):
        slots({"CPU": 2.0}, {"CPU": 0.0})


def test_group_size_is_clamped_to_the_range() -> None:
    assert group_size(free=5, running=0, lo=1, hi=4) == 4
    assert group_size(free=1, running=1, lo=1, hi=4) == 2
    assert group_size(free=0, running=0, lo=1, hi=4) is None
    assert group_size(free=1, running=0, lo=2, hi=4) is None


def test_settled_slots_waits_for_a_stable_reading() -> None:
    readings = iter([2, 2, 1, 1, 1, 1, 1, 1, 1, 1])
    assert settled_slots(lambda: next(readings), stable_s=0.02, interval_s=0.01) == 1


def test_resize_history_drops_what_a_rollback_undid(tmp_path: Path) -> None:
    folder = RunFolder.open(tmp_path / "run")

    def ckpt(step: int, world: int) -> Path:
        path = folder.checkpoints / checkpoint_name(step)
        path.mkdir(parents=True, exist_ok=True)
        write_meta(path, {"step": step, "world_size": world, "sha256": {}})
        return path

    record_resize(folder, None, 2, "a")  # a fresh start: nothing
    record_resize(folder, ckpt(60, 2), 1, "b")  # 2 -> 1 at step 60
    record_resize(folder, ckpt(80, 1), 2, "c")  # 1 -> 2 at step 80
    assert [(e["step"], e["old_workers"], e["new_workers"]) for e in read_resizes(folder)] == [(60, 2, 1), (80, 1, 2)]
    record_resize(folder, ckpt(60, 2), 2, "d")  # rolled back to step 60 at 2 workers: both undone
    assert read_resizes(folder) == []
    record_resize(folder, ckpt(60, 2), 1, "e")
    events = read_resizes(folder)
    ends = [("lost", events[0]["time"] - 1.5), ("finished", events[0]["time"] + 9)]
    assert _annotate(events, ends) == [{"step": 60, "old_workers": 2, "new_workers": 1, "cause": "lost",
                                        "restart_s": 1.5}]


def test_growth_watch_waits_for_the_group_to_hold_its_own_slots(tmp_path: Path) -> None:
    """Until rank 0 logs a step of the segment, the slots the group is about to take read as free: no
    request to grow then (it restarted the group at its own size after every checkpoint)."""
    from distsched.cluster.elastic import _GrowthWatch

    metrics, stop = tmp_path / "metrics.jsonl", tmp_path / "stop"
    metrics.write_text('{"step": 10}\n', encoding="utf-8")
    watch = _GrowthWatch(lambda: 1, size=1, hi=2, stop_file=str(stop), poll_s=0.01, settle_s=0.0,
                         metrics_path=metrics)
    watch.start()
    time.sleep(0.3)
    assert not stop.exists()  # one slot "free", but the group has not placed itself yet
    with metrics.open("a", encoding="utf-8") as f:
        f.write('{"step": 20}\n')
    watch.join(timeout=5)
    assert stop.read_text() == "2" and not watch.is_alive()


# ---------------------------------------------------------------------------------------- end to end
def _final_states(root: Path, world: int) -> list[dict]:
    return [load_rank_state(root / "checkpoints" / checkpoint_name(STEPS), r) for r in range(world)]


def _cut_back(run: Path, step: int) -> None:
    """Remove what a run did after the checkpoint of ``step`` (later checkpoints, the summary)."""
    for child in (run / "checkpoints").iterdir():
        if child.name.startswith("step_") and int(child.name.split("_")[1]) > step:
            shutil.rmtree(child)
    (run / "summary.json").unlink(missing_ok=True)


def _reference(tmp_path: Path, resizes: list[dict], cfg: dict = CFG) -> Path:
    """The same run without Ray: 2 workers from the start, resized by ``--resume --workers`` at each
    recorded step (a rollback to that checkpoint, as the elastic run did)."""
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump({**cfg, "workers": 2}), encoding="utf-8")
    run = tmp_path / "ref"
    assert main(["train", str(path), "--launcher", "processes", "--run-dir", str(run), "--no-progress"]) == 0
    for event in resizes:
        _cut_back(run, event["step"])
        assert main(["train", "--resume", str(run), "--workers", str(event["new_workers"]), "--launcher",
                     "processes", "--no-progress"]) == 0
    return run


@pytest.mark.slow  # three Ray Train worker groups and three spawned reference runs; fast cover: the tests above
@pytest.mark.timeout(1500)
def test_worker_lost_then_back(ray_cluster, tmp_path: Path) -> None:
    import ray

    from distsched.cluster.elastic import train_elastic
    from distsched.train import FaultInjection, prepare_run

    assert ray.cluster_resources().get("CPU") == 2  # the shared test cluster: room for 2 workers

    @ray.remote(num_cpus=1)
    class Tenant:  # another user of the cluster: holds a CPU while it lives
        def pid(self) -> int:
            return os.getpid()

    held: dict = {}

    def on_event(kind: str, info: dict) -> None:
        if kind == "ended" and info["cause"] == "lost":  # the lost worker's CPU is taken for good...
            held["tenant"] = Tenant.remote()
            ray.get(held["tenant"].pid.remote(), timeout=300)
        elif kind == "starting" and "tenant" in held:  # ... until the group at 1 worker starts: then returned
            ray.kill(held.pop("tenant"))

    folder, cfg = prepare_run(config_from_mapping(CFG), run_dir=tmp_path / "elastic", exclusive=True)
    marker = tmp_path / "killed"
    summary = train_elastic(cfg, folder, progress=False, settle_s=0.0, poll_s=0.2, on_event=on_event,
                            fault=FaultInjection(rank=1, step=KILL_AT, marker=str(marker)))
    assert marker.exists()  # rank 1's process really died
    assert summary["segments"] == [2, 1, 2] and summary["lost_worker_restarts"] == 1
    shrink, grow = summary["resizes"]
    assert (shrink["old_workers"], shrink["new_workers"], shrink["cause"]) == (2, 1, "lost")
    assert shrink["step"] in (KILL_AT - 20, KILL_AT)  # the newest intact checkpoint before the kill
    assert (grow["old_workers"], grow["new_workers"], grow["cause"]) == (1, 2, "grown")
    assert grow["step"] % 20 == 0 and grow["step"] > shrink["step"]  # stopped right after a checkpoint
    assert summary["steps_done"] == STEPS and summary["workers"] == 2
    assert all(r["restart_s"] > 0 for r in summary["resizes"])
    records = [json.loads(ln) for ln in folder.metrics_path.read_text().splitlines() if '"step"' in ln]
    assert [r["step"] for r in records] == list(range(10, STEPS + 1, 10))  # no step logged twice
    # the LR: cosine(t) x W/W0 ("linear"), W0 = 2, W = 1 between the two resizes
    for r in records:
        t = r["step"] - 1
        w = 1 if shrink["step"] <= t < grow["step"] else 2
        cos = 0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * t / STEPS, dtype=torch.float64)).item())
        assert r["lr"] == pytest.approx(cos * w / 2, rel=1e-9), r

    ref = _reference(tmp_path, summary["resizes"])
    for got, want in zip(_final_states(folder.root, 2), _final_states(ref, 2), strict=True):
        assert got["world_size"] == want["world_size"] == 2 and got["base_world"] == want["base_world"] == 2
        for name in want["model"]:
            torch.testing.assert_close(got["model"][name], want["model"][name], rtol=0, atol=0)
        assert got["engine"]["rounds"] == want["engine"]["rounds"]
        assert got["sampler"] == want["sampler"]


DP_CFG = {**CFG, "sync": {"name": "fixed", "h": 1},
          "privacy": {"target_epsilon": 4.0, "delta": 1.0e-5, "max_grad_norm": 1.0, "accountant": "rdp",
                      "mode": "group", "reproducible": True}}


@pytest.mark.slow  # two Ray Train worker groups and two spawned reference runs; fast cover: resize-on-resume's DP tests
@pytest.mark.timeout(1500)
def test_dp_group_mode_worker_lost_for_good(ray_cluster, tmp_path: Path) -> None:
    """DP in group mode: rank 1 dies for good (its CPU taken by another user until the end), the run
    finishes at 1 worker without restarting at its own size; the accountant charged the new sample rate
    from the resize step (a new segment), so the steps, epsilon and the model equal the run resized by
    hand, and the budget held."""
    import ray

    from distsched.cluster.elastic import train_elastic
    from distsched.train import FaultInjection, prepare_run

    @ray.remote(num_cpus=1)
    class Tenant:
        def pid(self) -> int:
            return os.getpid()

    held: list = []

    def on_event(kind: str, info: dict) -> None:
        if kind == "ended" and info["cause"] == "lost":  # the lost worker's CPU is taken for good
            held.append(Tenant.remote())
            ray.get(held[-1].pid.remote(), timeout=300)

    try:
        folder, cfg = prepare_run(config_from_mapping(DP_CFG), run_dir=tmp_path / "elastic", exclusive=True)
        summary = train_elastic(cfg, folder, progress=False, settle_s=0.0, poll_s=0.2, on_event=on_event,
                                fault=FaultInjection(rank=1, step=KILL_AT, marker=str(tmp_path / "killed")))
    finally:
        for tenant in held:
            ray.kill(tenant)
    assert summary["segments"] == [2, 1] and summary["lost_worker_restarts"] == 1
    (shrink,) = summary["resizes"]
    assert (shrink["old_workers"], shrink["new_workers"], shrink["cause"]) == (2, 1, "lost")
    assert summary["workers"] == 1
    ref = _reference(tmp_path, summary["resizes"], DP_CFG)
    want = json.loads((ref / "summary.json").read_text())
    # the budget, planned for 400 steps at 2 workers, runs out a little earlier at 1: no step past it
    assert summary["steps_done"] == want["steps_done"] <= STEPS
    assert summary["epsilon"] == pytest.approx(want["epsilon"], rel=1e-12)
    assert 0 < summary["epsilon"] <= 4.0
    last = checkpoint_name(summary["steps_done"])
    got_state = load_rank_state(folder.root / "checkpoints" / last, 0)
    ref_state = load_rank_state(ref / "checkpoints" / last, 0)
    for name in ref_state["model"]:
        torch.testing.assert_close(got_state["model"][name], ref_state["model"][name], rtol=0, atol=0)
