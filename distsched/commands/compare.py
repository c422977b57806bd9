"""``distsched compare RUN_DIR... [--out FILE.png] [--json]``: overlay several runs (training loss vs step
and vs bytes sent) and print one table row per run."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (each with a metrics.jsonl)")
    parser.add_argument("--out", default="compare.png", help="the overlay PNG (default ./compare.png)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Rows of equal keys as an aligned text table."""
    keys = list(rows[0])
    cells = [keys] + [[_cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def run(args: argparse.Namespace) -> int:
    import json

    from distsched.report.dashboard import compare

    path, rows = compare(args.runs, args.out)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    rows = [{k: r.get(k) for k in keys} for r in rows]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    print(f"wrote {path}")
    return 0
