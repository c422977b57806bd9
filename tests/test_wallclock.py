"""benchmarks/wallclock.py: the time-to-target arithmetic of its table, and a tiny end-to-end run on two
test-bed hosts (slow; needs root for the network namespaces)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from testbed_support import unavailable

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("wallclock", ROOT / "benchmarks" / "wallclock.py")
wallclock = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(wallclock)


def _rec(variant, seed, evals, time_s):
    evals = [{"step": i, "time_s": t, "loss": loss, "bpb": loss / 0.6931471805599453} for i, (t, loss) in
             enumerate(evals)]
    return {"variant": variant, "seed": seed, "evals": evals, "rounds": 10, "bytes_per_worker": 4e6,
            "train_time_s": time_s, "final_loss": evals[-1]["loss"], "final_bpb": evals[-1]["bpb"], "rate": "100mbit"}


def test_time_to_target_is_the_first_evaluation_at_or_below_it():
    evals = [{"time_s": 1.0, "loss": 3.0}, {"time_s": 2.0, "loss": 2.0}, {"time_s": 3.0, "loss": 1.5}]
    assert wallclock.time_to_target(evals, 2.0) == 2.0
    assert wallclock.time_to_target(evals, 1.9) == 3.0
    assert wallclock.time_to_target(evals, 1.0) is None


def test_table_speedups_are_paired_by_seed():
    records = [
        _rec("ddp", 0, [(10.0, 3.0), (40.0, 2.0)], 40.0),
        _rec("ddp", 1, [(10.0, 3.0), (50.0, 2.5)], 50.0),
        _rec("diloco", 0, [(4.0, 2.2), (8.0, 1.9)], 8.0),   # reaches 2.0 at 8 s: 40 / 8 = 5x
        _rec("diloco", 1, [(5.0, 2.4), (10.0, 2.3)], 10.0),  # reaches 2.5 at 5 s: 50 / 5 = 10x
        _rec("fixed_h", 0, [(5.0, 2.6), (9.0, 2.1)], 9.0),   # never reaches 2.0
    ]
    probe = {"params": 2e6, "step_s": 0.1, "allreduce_s": 0.64, "allreduce_mbit_per_s": 100.0}
    text = wallclock.table(records, {"100mbit": probe})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "variant" not in line}
    assert rows["diloco"][1] == "6.5" and rows["diloco"][2] == "7.50x (5.00-10.00)"
    assert rows["diloco"][6] == "DDP never as low, DDP never as low"
    assert rows["fixed_h"][6] == "4.44x"  # DDP reaches 2.1 at 40 s; fixed_h trained 9 s
    assert rows["ddp"][2] == "1.00x (1.00-1.00)"
    assert rows["fixed_h"][1] == "reached in 0/1 seeds" and rows["fixed_h"][2] == "-"
    assert "6.4 steps" in text and "(100%)" in text



def test_table_reports_time_to_diloco_and_spread_over_seeds():
    records = [
        _rec("ddp", 0, [(10.0, 3.0), (40.0, 2.0)], 40.0),
        _rec("ddp", 1, [(10.0, 3.0), (50.0, 2.5)], 50.0),
        _rec("diloco", 0, [(4.0, 2.4), (8.0, 2.2)], 8.0),
        _rec("diloco", 1, [(5.0, 2.6), (12.0, 2.5)], 12.0),
        _rec("diloco_stream_int8", 0, [(2.0, 2.2), (6.0, 2.1)], 6.0),  # DiLoCo's 2.2 at 2 s: 8 / 2 = 4x
        _rec("diloco_stream_int8", 1, [(3.0, 2.7), (9.0, 2.6)], 9.0),  # never reaches 2.5
    ]
    probe = {"params": 2e6, "step_s": 0.1, "allreduce_s": 0.64, "allreduce_mbit_per_s": 100.0}
    text = wallclock.table(records, {"100mbit": probe})
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "variant" not in line}
    assert len(rows["ddp"]) == 11
    assert rows["diloco"][9:] == ["10.0", "1.00x (1.00-1.00)"]
    assert rows["diloco_stream_int8"][9:] == ["reached in 1/2 seeds", "4.00x"]
    assert rows["diloco"][3] == "10.0 +- 2.8 [8.0-12.0]"  # train time: mean, sample std, range
    bpb = [2.1 / 0.6931471805599453, 2.6 / 0.6931471805599453]
    assert rows["diloco_stream_int8"][4].startswith(f"{sum(bpb) / 2:.3f} +- ")
    gap = wallclock.paired_gaps(records, "diloco_stream_int8", "diloco")
    assert gap.endswith(f"[{-0.1 / 0.6931471805599453:+.3f}, {0.1 / 0.6931471805599453:+.3f}]")
    assert "diloco_stream_int8 - diloco, final bits per byte paired by seed" in text
    assert wallclock.paired_gaps(records, "qsr", "fixed_h") is None
    no_ddp = wallclock.table([r for r in records if r["variant"] != "ddp"], {"100mbit": probe})  # --skip-ddp
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in no_ddp.splitlines() if line.startswith("| ") and "variant" not in line}
    stream = rows["diloco_stream_int8"]
    assert stream[:3] == ["2", "n/a", "-"] and stream[9] == "reached in 1/2 seeds"


def test_qsr_rounds_by_the_rule_alone_equal_the_engines_rounds():
    import torch

    from distsched.sync import LocalSGD

    for size in (wallclock.TINY, {**wallclock.FULL, "h": 4}):
        engine = LocalSGD(torch.nn.Linear(2, 1), rule=wallclock._qsr(size), schedule=wallclock._schedule(size),
                          total_steps=size["steps"])
        for t in range(size["steps"]):
            engine.step(t)
        assert engine.rounds == wallclock.qsr_rounds(size)
    rule, _ = wallclock._rule("fixed_h_eq", wallclock.FULL)
    assert rule.h == round(wallclock.FULL["steps"] / wallclock.qsr_rounds(wallclock.FULL))


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
def test_tiny_run_on_two_testbed_hosts(tmp_path):
    out = tmp_path / "wallclock.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wallclock.py"), "--tiny", "--rates", "1gbit",
                           "--variants", "ddp", "qsr", "diloco", "--stream", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    by = {r["variant"]: r for r in res["records"]}
    steps = res["size"]["steps"]
    assert set(by) == {"ddp", "qsr", "diloco", "diloco_stream_int8"} and by["ddp"]["rounds"] == steps
    assert by["qsr"]["rounds"] < steps and by["diloco"]["bytes_per_worker"] < by["ddp"]["bytes_per_worker"]
    assert all(r["evals"][-1]["step"] == steps for r in res["records"])
    stream = by["diloco_stream_int8"]  # 4 int8 fragments: a quarter of the bytes, a smaller peak per step
    assert stream["bytes_per_worker"] < by["diloco"]["bytes_per_worker"] / 2
    assert stream["peak_step_bytes"] < by["diloco"]["peak_step_bytes"] and len(stream["evals"]) > 1
    assert res["probes"]["1gbit"]["allreduce_mbit_per_s"] > 0


def test_steps_shorter_than_warmup_plus_one_evaluation_is_refused_in_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wallclock.py"), "--steps", "20"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 2 and "needs root" in proc.stderr:
        pytest.skip("wallclock.py needs root")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "wallclock.py: --steps must be >= warmup + eval_every = 48, got 20"]
