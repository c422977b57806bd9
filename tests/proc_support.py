"""Processes and TCP sockets as Linux's ``/proc`` shows them, for the tests that check what a run
starts and where it listens: a process's descendants, which of them are still alive, and the rows
of ``/proc/net/tcp`` and ``/proc/net/tcp6`` (state ``0A`` is LISTEN; addresses are little-endian hex,
see ``Documentation/networking/proc_net_tcp.rst`` in the Linux sources).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

TCP_LISTEN = "0A"


class TcpRow(NamedTuple):
    """One socket of a ``/proc/net/tcp`` or ``tcp6`` table."""

    state: str  # "LISTEN" or "OTHER"
    local: str  # "ip:port" (IPv4-mapped IPv6 addresses written as IPv4)
    remote: str
    inode: str


def hex_address(text: str) -> str:
    """``"0100007F:1F90"`` -> ``"127.0.0.1:8080"``; tcp6's four little-endian 32-bit words likewise."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(raw[::-1])
    else:
        ip = ipaddress.IPv6Address(b"".join(raw[k:k + 4][::-1] for k in range(0, 16, 4)))
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return f"{ip}:{int(port, 16)}"


def ip_of(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IP of an ``"ip:port"`` string."""
    return ipaddress.ip_address(address.rsplit(":", 1)[0])


def parse_tcp_table(text: str) -> list[TcpRow]:
    """The rows of ``/proc/net/tcp`` and/or ``tcp6`` text (header lines skipped)."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10 or parts[0] == "sl":
            continue
        state = "LISTEN" if parts[3] == TCP_LISTEN else "OTHER"
        rows.append(TcpRow(state, hex_address(parts[1]), hex_address(parts[2]), parts[9]))
    return rows


def tcp_rows(net: str = "/proc/self/net") -> list[TcpRow]:
    """Every TCP socket of this process's network namespace (tables that cannot be read are skipped)."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            rows += parse_tcp_table(Path(net, name).read_text())
        except OSError:
            continue
    return rows


def socket_inodes(pids: Iterable[int]) -> dict[str, set[int]]:
    """Socket inode -> the pids holding it, over the open descriptors of ``pids`` (gone pids skipped)."""
    found: dict[str, set[int]] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    found.setdefault(target[8:-1], set()).add(pid)
        except OSError:
            continue
    return found


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def listeners(pids: Iterable[int]) -> set[tuple[str, int]]:
    """``(ip, port)`` of every listening TCP socket owned by ``pids``."""
    inodes = socket_inodes(pids)
    return {(str(ip_of(r.local)), int(r.local.rsplit(":", 1)[1])) for r in tcp_rows()
            if r.state == "LISTEN" and r.inode in inodes}


def descendants(root: int) -> set[int]:
    """``root`` and every process below it (parents read from ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def alive(pids: Iterable[int]) -> set[int]:
    return {pid for pid in pids if is_alive(pid)}
