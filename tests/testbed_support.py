"""Drive ``launch/testbed.sh`` from tests: bring hosts up, run commands on them, read their sockets.

Every test-bed made here has its own name prefix (so concurrent test sessions never share one) and is
always torn down: the processes still running in its namespaces are killed by pid, then ``down``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from proc_support import all_pids, ip_of, is_alive, parse_tcp_table, socket_inodes, tcp_rows

from distsched.report import read_metrics
from distsched.train.checkpoint import checkpoint_name, load_rank_state

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "testbed.sh"
NETPERF = ROOT / "launch" / "netperf.py"
TESTBED_NET = ipaddress.ip_network("198.18.0.0/15")


def unavailable() -> str | None:
    """Why no test-bed can be made here (``None`` when it can)."""
    if not os.path.exists("/proc/net/tcp") or shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs Linux with iproute2 (ip, tc)"
    if os.geteuid() != 0:
        return "needs root to make network namespaces (launch/testbed.sh)"
    probe = f"dsq{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make network namespaces here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Hosts:
    """One test-bed (``TESTBED_PREFIX=prefix``) on this machine."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.env = {**os.environ, "TESTBED_PREFIX": prefix}

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"testbed.sh {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def up(self, n: int, *options: str) -> None:
        self.script("up", str(n), *options)

    def down(self) -> None:
        for ns in self.namespaces():
            kill_all(self.pids(ns))
        self.script("down")

    def ns(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    @staticmethod
    def addr(i: int) -> str:
        return f"198.18.0.{i + 1}"

    def namespaces(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(f"{self.prefix}h") and n[len(self.prefix) + 1:].isdigit()]

    def on(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run on host ``i``."""
        return ["ip", "netns", "exec", self.ns(i), *argv]

    @staticmethod
    def pids(ns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def tcp_sockets(self, i: int) -> list[tuple[str, str, str]]:
        """``(state, local address, remote address)`` of every TCP socket of host ``i``."""
        out = subprocess.run(self.on(i, ["cat", "/proc/net/tcp", "/proc/net/tcp6"]), capture_output=True,
                             text=True, check=True).stdout
        return [(r.state, r.local, r.remote) for r in parse_tcp_table(out)]

    def interfaces(self, i: int) -> dict[str, list[str]]:
        """Interface name -> its addresses (``ip -o addr``) on host ``i``."""
        out = subprocess.run(self.on(i, ["ip", "-o", "addr", "show"]), capture_output=True, text=True,
                             check=True).stdout
        found: dict[str, list[str]] = {}
        for line in out.splitlines():
            parts = line.split()
            found.setdefault(parts[1], []).append(parts[3].split("/")[0])
        links = subprocess.run(self.on(i, ["ip", "-o", "link", "show"]), capture_output=True, text=True,
                               check=True).stdout
        for line in links.splitlines():
            found.setdefault(line.split(": ")[1].split("@")[0], [])
        return found


@contextmanager
def hosts_up(n: int, *options: str, prefix: str | None = None) -> Iterator[Hosts]:
    """A test-bed of ``n`` hosts, always removed afterwards (with every process left running on it)."""
    bed = Hosts(prefix or f"dst{os.getpid() % 100000}")
    try:
        bed.up(n, *options)
        yield bed
    finally:
        bed.down()


def kill_all(pids: Sequence[int], grace_s: float = 5.0) -> None:
    """SIGTERM these processes, SIGKILL those still alive after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive or sig == signal.SIGKILL:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(is_alive(p) for p in alive):
            time.sleep(0.1)
        pids = [p for p in alive if is_alive(p)]


def root_listener_inodes() -> dict[str, str]:
    """Listening TCP sockets of the root namespace on non-loopback addresses: socket inode -> address."""
    return {r.inode: r.local for r in tcp_rows() if r.state == "LISTEN" and not ip_of(r.local).is_loopback}


def socket_owners(inodes: dict[str, str]) -> dict[str, set[int]]:
    """Address -> the pids holding these socket inodes (a scan of every process's descriptors)."""
    found: dict[str, set[int]] = {addr: set() for addr in inodes.values()}
    for inode, pids in socket_inodes(all_pids()).items():
        if inode in inodes:
            found[inodes[inode]] |= pids
    return found


def watch(bed: Hosts, procs: list[subprocess.Popen], timeout_s: float, n: int = 2, interval_s: float = 1.0) -> dict:
    """Sample every TCP socket of the hosts, and the root namespace's listeners, until ``procs`` end."""
    seen: dict = {"hosts": set(), "root": {}, "pids": set()}
    baseline = root_listener_inodes()  # listeners of others (other tests on this machine) are not ours
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        for i in range(n):
            seen["hosts"].update((i, *row) for row in bed.tcp_sockets(i))
            seen["pids"].update(bed.pids(bed.ns(i)))
        new = {k: v for k, v in root_listener_inodes().items() if k not in baseline}
        for addr, pids in socket_owners(new).items():  # who opened a new one while the run was on
            seen["root"].setdefault(addr, set()).update(pids)
        time.sleep(interval_s)
    return seen


def assert_sockets_on_testbed(bed: Hosts, seen: dict, n: int = 2) -> None:
    """Every socket of the run is on a test-bed address or the host's own loopback; a wildcard
    listener in a host reaches only its loopback and its test-bed link (it has no other); the hosts
    talked over the test-bed; nothing of the run listens in the root namespace."""
    for i in range(n):
        assert set(bed.interfaces(i)) == {"lo", "eth0"}
    cross = 0
    for i, state, local, remote in seen["hosts"]:
        lip, rip = ip_of(local), ip_of(remote)
        if state == "LISTEN" or rip.is_unspecified:  # listening, or bound and not connected
            assert lip.is_unspecified or lip.is_loopback or str(lip) == bed.addr(i), (i, local)
        else:
            assert lip.is_loopback or str(lip) == bed.addr(i), (i, local, remote)
            assert rip.is_loopback or rip in TESTBED_NET, (i, local, remote)
            cross += str(lip) == bed.addr(i) and rip in TESTBED_NET and str(rip) != bed.addr(i)
    assert cross > 0, "no connection between hosts was seen"
    for addr, pids in seen["root"].items():
        assert ip_of(addr) not in TESTBED_NET, addr
        assert not (pids & seen["pids"]), (addr, pids)


# -- the run each multi-host test (torchrun, Ray, SLURM) compares with the 2-process single-host run --
STEPS = 20


def two_worker_config(name: str) -> dict:
    """A 20-step, 2-worker digits run (fixed H = 4: five sync rounds) with one final checkpoint;
    ``name`` names the run folder."""
    return {
        "name": name,
        "seed": 1,
        "workers": 2,
        "steps": STEPS,
        "batch_size": 16,
        "log_every": 5,
        "model": {"name": "mlp", "hidden": [16]},
        "data": {"name": "digits"},
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "schedule": {"name": "cosine", "lr": 0.1, "total_steps": STEPS},
        "sync": {"name": "fixed", "h": 4},
        "checkpoint": {"every": STEPS, "keep": 1},
    }


def records_without_times(run_dir: Path) -> list[dict]:
    """A run folder's metrics records without their wall-clock fields (``*time_s``, ``elapsed_s``)."""
    return [{k: v for k, v in r.items() if not k.endswith("time_s") and k != "elapsed_s"}
            for r in read_metrics(run_dir / "metrics.jsonl")]


def assert_same_run(run_dir: Path, ref: Path) -> None:
    """Bit for bit the same run: summary figures, metrics records (wall-clock fields aside) and the
    final parameters of both ranks."""
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (run_dir, ref))
    for key in ("final_loss", "test_accuracy", "test_loss", "sync_rounds", "bytes_sent", "steps_done", "workers"):
        assert ours[key] == theirs[key], key
    assert records_without_times(run_dir) == records_without_times(ref)
    final = checkpoint_name(STEPS)
    for rank in (0, 1):
        a = load_rank_state(run_dir / "checkpoints" / final, rank)["model"]
        b = load_rank_state(ref / "checkpoints" / final, rank)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
