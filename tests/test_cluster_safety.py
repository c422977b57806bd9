"""Joining and leaving Ray clusters safely (issue 10, items 6 and 9).

* ``--address`` with nothing listening fails in seconds with one line (it used to retry for minutes).
* The embedded default ignores ``RAY_ADDRESS``; Ray's token file is mode 0600.
* A driver that joins a token-protected cluster needs no ``RAY_AUTH_MODE`` export.
* ``kill -9`` of a driver leaves no process of its embedded cluster alive after a few seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from proc_support import alive, descendants

CFG = {"name": "j", "seed": 0, "workers": 1, "steps": 4, "batch_size": 8, "model": {"name": "mlp", "hidden": [4]},
       "data": {"name": "digits"}, "schedule": {"name": "constant", "lr": 0.1}}


def _env(home: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(OMP_NUM_THREADS="1", **extra)
    if home is not None:
        env["HOME"] = str(home)
    return env


def test_unreachable_address_is_one_line_in_seconds(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "distsched", "train", str(cfg), "--address", "127.0.0.1:1",
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, env=_env(), timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "127.0.0.1:1" in proc.stderr
    assert took < 60  # the CLI's start-up and the preflight; the connection check itself takes < 5 s
    assert not (tmp_path / "runs").exists()


_DRIVER = """
import sys, time
from distsched.cluster import connect
info = connect(num_cpus=1)
print(info["address"], flush=True)
time.sleep(600)
"""

_JOIN = """
import sys, ray
from distsched.cluster import connect
connect(sys.argv[1])
print(int(ray.cluster_resources()["CPU"]), flush=True)
"""


def test_inherited_auth_opt_out_is_overridden_for_the_embedded_cluster(monkeypatch, capfd) -> None:
    """``RAY_AUTH_MODE=disabled`` (Ray's documented opt-out) inherited from the environment no longer turns
    token authentication off for the embedded cluster: overridden with one line, and Ray's own reading of its
    mode is then ``token`` (fast: no cluster started; the slow test below starts one)."""
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._raylet import Config

    from distsched.cluster.local import _keep_token_auth

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    Config.initialize("")
    try:
        assert not is_token_auth_enabled()  # what Ray itself would start with
        capfd.readouterr()
        _keep_token_auth()
        assert is_token_auth_enabled() and os.environ["RAY_AUTH_MODE"] == "token"
        err = capfd.readouterr().err.strip().splitlines()
        assert err == ["distsched: ignoring RAY_AUTH_MODE=disabled: the local cluster keeps token authentication"]
    finally:
        monkeypatch.undo()
        Config.initialize("")


AUTH_SCRIPT = """
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
from distsched.cluster.local import connect
connect(num_cpus=1)
print("token", is_token_auth_enabled(), flush=True)
ray.shutdown()
"""


@pytest.mark.slow  # one embedded Ray cluster (~20 s on 2 busy cores); the override itself is tested fast above
def test_embedded_cluster_keeps_token_auth_against_an_inherited_opt_out(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", AUTH_SCRIPT], capture_output=True, text=True, timeout=300,
                          env=_env(tmp_path, RAY_AUTH_MODE="disabled", PYTHONPATH=str(root)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "token True" in proc.stdout  # was "token False": a cluster without authentication
    assert "ignoring RAY_AUTH_MODE=disabled" in proc.stderr
    token = tmp_path / ".ray" / "auth_token"
    assert token.is_file() and (token.stat().st_mode & 0o777) == 0o600


@pytest.mark.slow
def test_embedded_cluster_join_token_and_orphans(tmp_path: Path) -> None:
    """The embedded default starts its own cluster even with RAY_ADDRESS set and a cluster recorded by
    ``ray start`` (``$RAY_TMPDIR/ray/ray_current_cluster``; before, ``ray.init()`` joined that one, or
    failed with "When connecting to an existing cluster, num_cpus ... must not be provided")."""
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="dsr", dir="/tmp"))  # short: Ray's socket paths must fit
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(home, RAY_ADDRESS="127.0.0.1:1", RAY_TMPDIR=str(ray_tmp)))
    try:
        address = driver.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), driver.stderr.read()[-3000:] if not address else address
        token = home / ".ray" / "auth_token"
        assert token.is_file() and token.stat().st_mode & 0o777 == 0o600

        # a second driver joins with the token file alone (no RAY_AUTH_MODE in its environment)
        joined = subprocess.run([sys.executable, "-c", _JOIN, address], capture_output=True, text=True,
                                env=_env(home, RAY_TMPDIR=str(ray_tmp)), timeout=300)
        assert joined.returncode == 0 and joined.stdout.strip() == "1", joined.stderr[-3000:]

        time.sleep(3)  # let Ray start its agents
        cluster = descendants(driver.pid) - {driver.pid}
        assert len(cluster) >= 3  # GCS, raylet, agents (and the watchdog)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 10
    while alive(cluster) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not alive(cluster), [Path(f"/proc/{p}/cmdline").read_text()[:80] for p in alive(cluster)]
    shutil.rmtree(ray_tmp, ignore_errors=True)
