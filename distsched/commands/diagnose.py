"""``distsched diagnose RUN_FOLDER|metrics.jsonl|metrics.csv``: classify a run from its loss curves
(divergence, overfitting, underfitting by premature decay, plateau, healthy) and print the evidence
and the remedies."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="a run folder (its metrics.jsonl or metrics.csv is read) or a metrics file")
    parser.add_argument("--train-key", help="training-loss column (default: train_loss, else loss)")
    parser.add_argument(
        "--val-key", help="validation-loss column (default: val_loss, else valid_loss, eval_loss, test_loss)"
    )
    parser.add_argument("--step-key", help="step column (default: step, else round, epoch, iteration)")
    parser.add_argument("--lr-key", help="learning-rate column (default: lr)")
    parser.add_argument("--json", action="store_true", help="print the diagnosis as one JSON object")


def metrics_file(path: str | Path) -> Path:
    """The metrics file of a run folder (``metrics.jsonl``, else ``metrics.csv``), or ``path`` itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("metrics.jsonl", "metrics.csv"):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"no metrics.jsonl or metrics.csv in {path}")
    if not path.exists():
        raise FileNotFoundError(f"metrics file not found: {path}")
    if path.suffix not in (".jsonl", ".csv", ".json"):
        raise ValueError(f"path must be a run folder, a .jsonl or a .csv file, got {str(path)!r}")
    return path


def run(args: argparse.Namespace) -> int:
    from distsched.analysis import diagnose_records
    from distsched.report import read_metrics

    path = metrics_file(args.path)
    records = [r for r in read_metrics(path) if isinstance(r, dict)]
    if path.suffix == ".csv":  # an empty CSV cell means "not measured here", not NaN
        records = [{k: v for k, v in r.items() if v is not None} for r in records]
    d = diagnose_records(
        records, train_key=args.train_key, val_key=args.val_key, step_key=args.step_key, lr_key=args.lr_key
    )
    if args.json:
        print(json.dumps({"path": str(path), "verdict": d.verdict, "evidence": list(d.evidence),
                          "remedies": list(d.remedies)}))
    else:
        print(f"{path}")
        print(d)
    return 0
