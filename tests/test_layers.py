"""The house's layers (DESIGN.md) and "only cluster/ imports Ray" as import-linter contracts in
pyproject.toml: the tree keeps them, and a new upward import or a Ray import elsewhere breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=120,
    )


def test_the_tree_keeps_the_layers_contract():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "distsched house layers KEPT" in out.stdout and "only cluster/ imports Ray KEPT" in out.stdout


def test_an_upward_import_or_ray_outside_cluster_breaks_the_contracts(tmp_path):
    shutil.copytree(ROOT / "distsched", tmp_path / "distsched", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "distsched" / "data" / "partitions.py"
    target.write_text(target.read_text() + "\nfrom distsched.federated import sampling  # noqa\n")
    sampling = tmp_path / "distsched" / "federated" / "sampling.py"
    sampling.write_text(sampling.read_text() + "\nimport ray  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "distsched.data is not allowed to import distsched.federated" in out.stdout
    assert "distsched.federated is not allowed to import ray" in out.stdout
