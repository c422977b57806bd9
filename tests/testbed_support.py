"""Drive ``launch/testbed.sh`` from tests: bring hosts up, run commands on them, read their sockets.

Every test-bed made here has its own name prefix (so concurrent test sessions never share one) and is
always torn down: the processes still running in its namespaces are killed by pid, then ``down``.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "testbed.sh"
NETPERF = ROOT / "launch" / "netperf.py"
TESTBED_NET = ipaddress.ip_network("198.18.0.0/15")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


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
        return parse_proc_net_tcp(out)

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
        while time.monotonic() < deadline and any(_exists(p) for p in alive):
            time.sleep(0.1)
        pids = [p for p in alive if _exists(p)]


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _hex_addr(text: str) -> str:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = ipaddress.IPv4Address(raw[::-1])
    else:  # four little-endian 32-bit words
        ip = ipaddress.IPv6Address(b"".join(raw[k:k + 4][::-1] for k in range(0, 16, 4)))
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return f"{ip}:{int(port, 16)}"


def parse_proc_net_tcp(text: str) -> list[tuple[str, str, str]]:
    """Rows of ``/proc/net/tcp`` or ``tcp6``: ``("LISTEN" | "OTHER", local, remote)``."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] == "sl":
            continue
        state = "LISTEN" if parts[3] == _LISTEN else "OTHER"
        rows.append((state, _hex_addr(parts[1]), _hex_addr(parts[2])))
    return rows


def root_listener_inodes() -> dict[str, str]:
    """Listening TCP sockets of the root namespace on non-loopback addresses: socket inode -> address."""
    inodes: dict[str, str] = {}
    for name in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):  # this process: the root namespace
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == _LISTEN and not ip_of(_hex_addr(parts[1])).is_loopback:
                inodes[parts[9]] = _hex_addr(parts[1])
    return inodes


def socket_owners(inodes: dict[str, str]) -> dict[str, set[int]]:
    """Address -> the pids holding these socket inodes (a scan of every process's descriptors)."""
    found: dict[str, set[int]] = {addr: set() for addr in inodes.values()}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    found[inodes[link[8:-1]]].add(int(proc.name))
        except OSError:
            continue
    return found


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address.rsplit(":", 1)[0])


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
