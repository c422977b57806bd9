"""``distsched diagnose`` on the example runs: its verdict must match the run's real accuracy.

The run folders under ``tests/data/example_runs`` (metrics.jsonl, config.yaml, summary.json) were produced by the
real commands, unedited:

* ``distsched simulate examples/fed_digits.yaml`` (30 rounds of FedAvg): 57% test accuracy with the loss
  still falling, once called "healthy";
* ``distsched train examples/digits_qsr.yaml --launcher processes`` (600 steps, cosine to 0.001): 97.5%.
"""

from __future__ import annotations

import json
from pathlib import Path

from distsched import cli

RUNS = Path(__file__).parent / "data" / "example_runs"


def _diagnose(folder: Path, capsys) -> dict:
    assert cli.main(["diagnose", str(folder), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_federated_example_at_57_percent_is_not_converged(capsys):
    folder = RUNS / "fed_digits"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final_test_acc"] < 0.6  # ground truth: far below what the same MLP reaches on digits
    out = _diagnose(folder, capsys)
    assert out["verdict"] == "not_converged", out
    assert any("train longer" in r for r in out["remedies"])


def test_train_example_at_97_percent_is_healthy(capsys):
    folder = RUNS / "digits_qsr"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.95 and summary["steps_done"] == summary["total_steps"]
    assert _diagnose(folder, capsys)["verdict"] == "healthy"
