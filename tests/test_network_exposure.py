"""Nothing listens beyond loopback in a single-node run (issue 10, item 5).

Every pid of the run (the CLI process and all its descendants: spawned workers, Ray's GCS, raylet,
agents and workers) is polled while it runs; each listening TCP socket they own is read from
``/proc/net/tcp`` and ``/proc/net/tcp6`` (state ``0A``). Reference: torch's own rendezvous, whose
TCPStore listens on every interface, is caught by the same scan (the scan can fail).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

LISTEN = "0A"


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _decode(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listeners(pids: set[int]) -> set[tuple[str, int]]:
    """``(address, port)`` of every listening TCP socket owned by ``pids``."""
    inodes = _socket_inodes(pids)
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == LISTEN and f[9] in inodes:
                addr, port = f[1].split(":")
                out.add((_decode(addr), int(port, 16)))
    return out


def _is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr in ("::1", "::ffff:127.0.0.1")


def _watch(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, set[tuple[str, int]]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listeners(_descendants(proc.pid))
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
