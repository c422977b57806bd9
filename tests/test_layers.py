"""The house's layers (DESIGN.md) and "only cluster/ imports Ray" as import-linter contracts in
pyproject.toml: the tree keeps them, and a new upward import or a Ray import elsewhere breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    coupling = tmp_path / "distsched" / "privacy" / "coupling.py"  # floor 3 siblings are independent
    coupling.write_text(coupling.read_text() + "\nfrom distsched.control import pid  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "distsched.data is not allowed to import distsched.federated" in out.stdout
    assert "distsched.federated is not allowed to import ray" in out.stdout
    assert "distsched.privacy is not allowed to import distsched.control" in out.stdout


def _floors(text: str) -> list[set[str]]:
    """``floor N   a/  b.py ...`` lines of DESIGN.md's house, top floor first, as sets of package names."""
    floors = []
    for line in text.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] == "floor" and words[1].isdigit():
            names = []
            for w in words[2:]:
                if not (w.endswith("/") or w.endswith(".py")):
                    break
                names.append(w.rstrip("/").removesuffix(".py"))
            floors.append(set(names))
    return floors


def test_the_contract_puts_every_package_on_its_design_floor():
    """Each layer of the contract lies inside one DESIGN.md floor, in the same order (a floor may be a
    chain of layers in the contract: stricter, never upward)."""
    design = ROOT.parent / "shared" / "DESIGN.md"
    if not design.exists():
        pytest.skip(f"{design} is not beside this checkout")
    floors = _floors(design.read_text())
    assert len(floors) == 6 and {"sync", "privacy", "control", "analysis"} == floors[6 - 3]  # floor 3 (top floor first)
    text = (ROOT / "pyproject.toml").read_text()
    block = text[text.index("layers = ["):]
    layers = [
        {p.strip() for p in line.strip().strip('",').split("|")}
        for line in block[:block.index("]")].splitlines()[1:] if line.strip().startswith('"')
    ]
    where = [next(i for i, floor in enumerate(floors) if layer <= floor) for layer in layers]
    assert where == sorted(where), list(zip(layers, where))
    assert set().union(*layers) == set().union(*floors)
