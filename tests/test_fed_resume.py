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
