"""The training loop with the communication-efficient engine (2 local processes, loopback): a run
with streaming fragments, int8 + error feedback and a delayed update, killed mid-run with an exchange
in flight and resumed, ends exactly like the uninterrupted run; its bytes are the int8 payload.

Slow (three 2-process runs); ``tests/test_sync_streaming.py::test_resume_with_an_exchange_in_flight_is_exact``
covers the same state round trip at the engine level in the default run.
"""

from __future__ import annotations

import math

import pytest
import torch

from distsched.report import read_metrics
from distsched.train import FaultInjection, config_from_mapping, prepare_run, run_processes
from distsched.train.checkpoint import checkpoint_name, load_rank_state

pytestmark = pytest.mark.slow

STEPS = 30
CFG = {
    "name": "stream",
    "seed": 4,
    "workers": 2,
    "steps": STEPS,
    "batch_size": 16,
    "log_every": 5,
    "model": {"name": "mlp", "hidden": [32]},  # Linear(64, 32): 2080, Linear(32, 10): 330
    "data": {"name": "digits", "partition": "iid"},
    "optimizer": {"name": "sgd", "momentum": 0.9},
    "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS, "min_lr": 0.001},
    "sync": {"rule": "fixed", "h": 4, "fragments": 2, "compression": "int8", "delay": 1,
             "outer": {"lr": {"name": "cosine", "lr": 0.8, "total_steps": 8, "min_lr": 0.4}, "momentum": 0.9}},
    "checkpoint": {"every": 10, "keep": 4},
}
KILL_AT = 15  # rank 1 dies before step 15; the checkpoint at step 10 holds fragment 0's exchange sent after step 9


def _final(folder) -> list[dict]:
    return [load_rank_state(folder.checkpoints / checkpoint_name(STEPS), r) for r in range(2)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder, cfg = prepare_run(config_from_mapping(CFG), run_dir=tmp_path_factory.mktemp("s") / "straight")
    return folder, run_processes(cfg, folder)


def test_bytes_are_the_int8_payload_and_workers_agree(straight):
    folder, summary = straight
    # fragment 0 sends after steps 1, 5, ..., 29 (8 times), fragment 1 after 3, 7, ..., 27 and 29 (8 times);
    # int8 payload: n bytes + 4 per block of 1024
    payload = [n + 4 * math.ceil(n / 1024) for n in (2080, 330)]
    assert summary["bytes_sent"] == 8 * payload[0] + 8 * payload[1]
    a, b = _final(folder)
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name])
    assert summary["test_accuracy"] > 0.5


def test_killed_run_with_an_exchange_in_flight_resumes_exactly(straight, tmp_path):
    ref, ref_summary = straight
    folder, cfg = prepare_run(config_from_mapping(CFG), run_dir=tmp_path / "killed")
    with pytest.raises(Exception, match="terminated|exited|signal"):  # noqa: B017 - the kill ends the job
        run_processes(cfg, folder, fault=FaultInjection(rank=1, step=KILL_AT, marker=str(tmp_path / "m")))
    saved = load_rank_state(folder.checkpoints / checkpoint_name(10), 0)
    assert [p is not None for p in saved["engine"]["pending"]] == [True, False]
    summary = run_processes(cfg, folder)
    assert summary["bytes_sent"] == ref_summary["bytes_sent"] and summary["sync_rounds"] == ref_summary["sync_rounds"]
    for got, want in zip(_final(folder), _final(ref)):
        for name in want["model"]:
            assert torch.equal(got["model"][name], want["model"][name]), name
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time_s"} for r in rs]  # noqa: E731
    assert strip(read_metrics(folder.metrics_path)) == strip(read_metrics(ref.metrics_path))
