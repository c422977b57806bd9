#!/usr/bin/env python3
"""Measure TCP throughput between two hosts (an iperf-like check, Python standard library only).

On the receiving host:  python3 launch/netperf.py recv --bind 198.18.0.2 [--port 5201]
On the sending host:    python3 launch/netperf.py send --to 198.18.0.2 [--port 5201] [--seconds 3]

The sender writes 64 KiB blocks for ``--seconds`` (at most ``--max-bytes``) and closes; the receiver
counts the bytes from the first to the last one it reads and prints one JSON line:
``{"bytes": B, "seconds": T, "mbit_per_s": 8 * B / T / 1e6}``. Both sides give up after ``--timeout``.
The receiver's clock starts at the first byte, so the connection set-up is not counted; a token-bucket
shaper's initial burst is (it is one burst, small against seconds of traffic).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

BLOCK = 64 * 1024


def receive(bind: str, port: int, timeout: float) -> dict[str, float]:
    """Accept one connection on ``bind:port`` and count what arrives until the sender closes."""
    with socket.create_server((bind, port)) as server:
        server.settimeout(timeout)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(timeout)
            first = conn.recv(BLOCK)
            if not first:
                return {"bytes": 0, "seconds": 0.0, "mbit_per_s": 0.0}
            start = last = time.perf_counter()
            total = len(first)
            deadline = start + timeout
            while time.perf_counter() < deadline:
                chunk = conn.recv(BLOCK)
                if not chunk:
                    break
                total += len(chunk)
                last = time.perf_counter()
    seconds = max(last - start, 1e-9)
    return {"bytes": total, "seconds": round(seconds, 4), "mbit_per_s": round(8 * total / seconds / 1e6, 3)}


def send(to: str, port: int, seconds: float, max_bytes: int, timeout: float) -> dict[str, float]:
    """Connect to ``to:port`` and write blocks for ``seconds`` (or ``max_bytes``), then close."""
    block = b"\0" * BLOCK
    deadline = time.monotonic() + timeout
    while True:  # the receiver may not listen yet
        try:
            conn = socket.create_connection((to, port), timeout=timeout)
            break
        except (ConnectionRefusedError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sent = 0
    with conn:
        start = time.perf_counter()
        while sent < max_bytes and time.perf_counter() - start < seconds:
            conn.sendall(block)
            sent += BLOCK
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the receiver to close: every byte was read
    return {"bytes": sent, "seconds": round(time.perf_counter() - start, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    recv = sub.add_parser("recv", help="receive one stream and print its throughput")
    recv.add_argument("--bind", required=True, help="address to listen on (this host's test-bed address)")
    snd = sub.add_parser("send", help="send one stream")
    snd.add_argument("--to", required=True, help="the receiver's address")
    snd.add_argument("--seconds", type=float, default=3.0, help="how long to send (default 3)")
    snd.add_argument("--max-bytes", type=int, default=2 * 1024**3, help="send at most this much")
    for p in (recv, snd):
        p.add_argument("--port", type=int, default=5201)
        p.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    try:
        if args.mode == "recv":
            result = receive(args.bind, args.port, args.timeout)
        else:
            result = send(args.to, args.port, args.seconds, args.max_bytes, args.timeout)
    except OSError as exc:
        print(f"netperf: {args.mode} failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
