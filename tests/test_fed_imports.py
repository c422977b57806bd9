"""A simulation without DP starts without the heavy libraries it never uses: the simulator and the
``simulate`` command import neither Opacus (seconds of start-up through :mod:`distsched.privacy`) nor Ray
(:mod:`distsched.cluster` imports it where an actor pool starts), scipy, scikit-learn or matplotlib (plots
are drawn after the run), and a run with ``--executor local`` loads none of them but matplotlib, without
``matplotlib.pyplot`` (the plots are pyplot-free figures).
DP simulations still load Opacus where they build their mechanism (tests/test_fed_dp_wrapper.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: libraries that importing the simulator must not load
HEAVY = ("opacus", "ray", "scipy", "sklearn", "matplotlib", "matplotlib.pyplot")

PROBE = """
import json, sys
HEAVY = {heavy!r}
import distsched.federated, distsched.federated.simulation, distsched.cluster
from distsched.cli import main
at_import = [m for m in HEAVY if m in sys.modules]
rc = main(["simulate", "examples/fed_digits.yaml", "--rounds", "1", "--executor", "local", "--out", {out!r},
           "--no-progress", "--json"])
print(json.dumps({{"rc": rc, "at_import": at_import, "after_run": [m for m in HEAVY if m in sys.modules]}}))
"""


def test_a_simulation_without_dp_loads_no_heavy_library_it_does_not_use(tmp_path):
    code = PROBE.format(heavy=HEAVY, out=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded["rc"] == 0
    assert loaded["at_import"] == []
    assert loaded["after_run"] == ["matplotlib"]  # the run folder's plots
