"""Nothing listens beyond loopback in a single-node run (issue 10, item 5).

Every pid of the run (the CLI process and all its descendants: spawned workers, Ray's GCS, raylet,
agents and workers) is polled while it runs; each listening TCP socket they own is read from
``/proc/net/tcp`` and ``/proc/net/tcp6`` (state ``0A``). Reference: torch's own rendezvous, whose
TCPStore listens on every interface, is caught by the same scan (the scan can fail).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from proc_support import descendants, listeners


def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_loopback  # an IPv4-mapped ::ffff:127.x reads as 127.x


def _watch(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, set[tuple[str, int]]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listeners(descendants(proc.pid))
        time.sleep(0.5)
    out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), seen


CFG = {
    "name": "net", "seed": 0, "workers": 2, "steps": 60, "batch_size": 16, "log_every": 20,
    "model": {"name": "mlp", "hidden": [16]}, "data": {"name": "digits"},
    "schedule": {"name": "constant", "lr": 0.05}, "sync": {"rule": "fixed", "h": 4},
    "checkpoint": {"every": 30, "keep": 1},
}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(CFG), encoding="utf-8")
    return path


_TORCH_STORE = """
import datetime, time, torch.distributed as d
from distsched.sync import free_port
s = d.TCPStore("127.0.0.1", free_port(), 1, True, datetime.timedelta(seconds=10))
time.sleep(1.5)
"""


def test_scan_catches_torch_default_store() -> None:
    """The reference: torch's TCPStore (as torch's tcp:// and env:// rendezvous start it) listens on
    every interface, and the scan sees it."""
    done, seen = _watch([sys.executable, "-c", _TORCH_STORE], timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(not _is_loopback(a) for a, _ in seen), seen


def test_init_process_group_binds_loopback() -> None:
    code = (
        "import time\nfrom distsched.sync import init_process_group, free_port\n"
        "init_process_group(0, 1, f'tcp://127.0.0.1:{free_port()}', backend='gloo')\ntime.sleep(1.5)\n"
    )
    done, seen = _watch([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert seen and all(_is_loopback(a) for a, _ in seen), seen


@pytest.mark.slow
def test_processes_launcher_listens_on_loopback_only(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "distsched", "train", str(_config(tmp_path)), "--launcher", "processes",
           "--out", str(tmp_path / "runs")]
    done, seen = _watch(cmd, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert seen, "the run's store was never seen listening"
    assert all(_is_loopback(a) for a, _ in seen), sorted(seen)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_embedded_ray_train_listens_on_loopback_only(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "distsched", "train", str(_config(tmp_path)), "--num-cpus", "2",
           "--no-progress", "--out", str(tmp_path / "runs")]
    done, seen = _watch(cmd, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(seen) > 3, sorted(seen)  # Ray's GCS, raylet, object manager, ... and the torch store
    assert all(_is_loopback(a) for a, _ in seen), sorted(seen)


def test_scan_reads_this_process_listeners_in_both_tables() -> None:
    """The /proc parser against sockets made here: a listener on 127.0.0.1 (tcp) and one on every
    IPv6 interface (tcp6) are found with their ports; a connected socket and a closed one are not."""
    import socket

    v4 = socket.create_server(("127.0.0.1", 0))
    v6 = socket.create_server(("::", 0), family=socket.AF_INET6) if socket.has_ipv6 else None
    client = socket.create_connection(v4.getsockname())
    try:
        seen = listeners({os.getpid()})
        assert ("127.0.0.1", v4.getsockname()[1]) in seen
        if v6 is not None:
            assert ("::", v6.getsockname()[1]) in seen and not _is_loopback("::")
        assert client.getsockname()[1] not in {port for _, port in seen}
        closed = v4.getsockname()[1]
    finally:
        client.close()
        v4.close()
        if v6 is not None:
            v6.close()
    assert ("127.0.0.1", closed) not in listeners({os.getpid()})
