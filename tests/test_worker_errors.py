"""Worker errors (issue 10, item 11): a model that does not fit the data fails in the driver's
preflight (one line, exit 2, no run folder, no cluster); a worker that raises under Ray is reported
in one line with the path of its full log, without a resume hint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.nn as nn
import yaml

from distsched.cli import main
from distsched.cluster.trainer import _translate
from distsched.report import RunFolder


def wrong_width(input_shape, num_classes):  # noqa: ANN001, ANN201 - a user factory
    return nn.Sequential(nn.Flatten(), nn.Linear(10, num_classes))  # the data has 64 features


def wrong_classes(input_shape, num_classes):  # noqa: ANN001, ANN201
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


@pytest.mark.parametrize("factory", ["wrong_width", "wrong_classes"])
def test_model_data_mismatch_fails_in_preflight(tmp_path: Path, capsys: pytest.CaptureFixture, factory: str) -> None:
    cfg = {"name": "bad", "seed": 0, "workers": 1, "steps": 4, "batch_size": 8,
           "model": {"name": f"{__name__}:{factory}"}, "data": {"name": "digits"},
           "schedule": {"name": "constant", "lr": 0.1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "runs"), "--launcher", "processes"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not run through it" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_worker_exception_is_one_line_with_its_log(tmp_path: Path) -> None:
    folder = RunFolder.open(tmp_path / "run")
    (folder.root / "logs").mkdir()
    log = folder.root / "logs" / "worker_1.log"
    (folder.root / "logs" / "failed-L").write_text(f"worker 1: ValueError: boom (full log: {log})")
    failed = _translate(RuntimeError("Training failed due to worker errors:\n\n...64 lines..."), folder, "L")
    assert str(failed) == f"worker 1: ValueError: boom (full log: {log})" and not failed.retryable
    died = _translate(RuntimeError("Training failed due to worker errors:\nActorDiedError: the actor died"),
                      folder, "other-launch")
    assert died.retryable and str(died).startswith("ActorDiedError: the actor died")


def test_lost_peer_is_retried_own_errors_are_not() -> None:
    import torch.distributed as dist

    from distsched.cluster.trainer import _lost_peer

    assert _lost_peer(dist.DistBackendError("NCCL communicator was aborted"))
    assert _lost_peer(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:25828: "
                                   "Connection reset by peer"))
    assert not _lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x64 and 10x10)"))
    assert not _lost_peer(ValueError("controller: the checkpoint has no controller state"))
