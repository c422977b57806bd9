"""Resuming a simulation (issue 10, items 3 and 4): the run's own config is used (a different one is
refused, only SAFE_KEYS may change), a finished run keeps its results, and the summary counts the
whole run. Reference: the uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from distsched.federated import Simulation, simulate
from distsched.federated.config import fed_config
from distsched.federated.resume import resume_config

CFG = {
    "name": "r", "seed": 3, "rounds": 4, "data": {"name": "digits"},
    "partition": {"scheme": "dirichlet", "num_clients": 20, "alpha": 0.5, "min_size": 2},
    "model": {"hidden": [16]}, "client": {"lr": 0.05, "batch_size": 10},
    "sampling": {"cohort_size": 5}, "strategy": {"name": "fedavg"}, "checkpoint_every": 2, "num_actors": 1,
}


def test_resume_config_allows_only_safe_keys(tmp_path: Path) -> None:
    from distsched.config import to_mapping
    from distsched.report import RunFolder

    folder = RunFolder.open(tmp_path / "run")
    folder.write_config(to_mapping(fed_config(CFG)))
    assert resume_config(folder.root, None, {}).rounds == 4
    assert resume_config(folder.root, {**CFG, "rounds": 9, "num_actors": 2}, {}).rounds == 9
    assert resume_config(folder.root, None, {"rounds": 7}).rounds == 7
    with pytest.raises(ValueError, match=r"differs .* in 'client.lr'"):
        resume_config(folder.root, {**CFG, "client": {"lr": 0.5, "batch_size": 10}}, {})
    with pytest.raises(ValueError, match=r"in 'partition.num_clients'"):
        resume_config(folder.root, {**CFG, "partition": {**CFG["partition"], "num_clients": 50}}, {})


def test_resume_with_fewer_rounds_than_done_is_refused(tmp_path: Path) -> None:
    """``--rounds 1`` for a run that has completed 2: refused naming rounds, config.yaml untouched (it was
    rewritten with ``rounds: 1`` and the run then reported round 2 of 1)."""
    first = Simulation(fed_config({**CFG, "rounds": 2}))
    first.run(out_dir=tmp_path, progress=False, plots=False)  # its last checkpoint: round 2
    run = first.folder.root
    before = (run / "config.yaml").read_text()
    with pytest.raises(ValueError, match="rounds: the run has completed 2 rounds; resume it with rounds >= 2"):
        simulate(None, resume=run, rounds=1, progress=False)
    assert (run / "config.yaml").read_text() == before
    assert simulate(None, resume=run, rounds=3, progress=False)["rounds"] == 3  # more rounds: continues
    assert "rounds: 3" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_resumed_and_finished_runs_describe_the_whole_run(tmp_path: Path) -> None:
    ref = simulate(CFG, out_dir=tmp_path / "ref")
    first = Simulation(fed_config(CFG))
    first.run(out_dir=tmp_path / "cut", progress=False, plots=False, stop_after=3)  # last checkpoint: round 2
    run = first.folder.root
    config_before = (run / "config.yaml").read_text()

    with pytest.raises(ValueError, match="differs"):  # another config is refused, nothing changes
        simulate({**CFG, "client": {"lr": 0.5, "batch_size": 10}}, resume=run)
    assert (run / "config.yaml").read_text() == config_before

    resumed = simulate(None, resume=run)
    assert resumed["rounds"] == 4
    assert resumed["client_updates"] == ref["client_updates"] > 0
    assert resumed["final_test_acc"] == ref["final_test_acc"]

    again = simulate(None, resume=run)  # finished: its results are kept
    assert again == resumed
