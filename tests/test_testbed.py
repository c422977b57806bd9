"""launch/testbed.sh: N hosts (network namespaces) on one bridge, shaped links, and a real 2-host run.

* the script: usage errors and missing rights are one line and exit 2; ``up`` converges (idempotent,
  keeps running processes), a failed ``up`` removes what it made, ``down`` leaves the root namespace's
  addresses, routes and links exactly as they were;
* the shaping: TCP throughput between two hosts at ``--rate 50mbit`` (launch/netperf.py) is 70-105% of
  the nominal rate, both link ends' token buckets carried the traffic, and unshaped it is far higher;
* torchrun across 2 hosts (one process each, c10d rendezvous on host 0) gives bit for bit the final
  parameters and metrics of the 2-process single-host run, with every socket of the run on the
  test-bed's addresses (or the hosts' own loopback) and nothing of it listening in the root namespace.

Skipped, with the reason, where network namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from testbed_support import (
    NETPERF,
    SCRIPT,
    Hosts,
    assert_same_run,
    assert_sockets_on_testbed,
    hosts_up,
    two_worker_config,
    unavailable,
    watch,
)

REASON = unavailable()
needs_testbed = pytest.mark.skipif(REASON is not None, reason=str(REASON))
PY = sys.executable


def _prefix(tag: str) -> str:
    return f"ds{tag}{os.getpid() % 10000}"


def _root_state() -> dict[str, str]:
    """The root namespace's addresses, routes and links: what the test-bed must leave as it was."""
    run = lambda *a: subprocess.run(["ip", *a], capture_output=True, text=True, check=True).stdout  # noqa: E731
    return {"addr": run("-o", "addr", "show"), "route": run("route", "show", "table", "all"),
            "route6": run("-6", "route", "show", "table", "all"), "links": run("-o", "link", "show")}


def _ours(prefix: str) -> list[str]:
    """Every namespace or link whose name has this prefix."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = [ln.split(": ")[1].split("@")[0]
             for ln in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()]
    return sorted(n for n in [*names, *links] if n.startswith(prefix))


# ------------------------------------------------------------------------------------------ the script
@pytest.mark.parametrize("args", [
    [], ["up"], ["up", "0"], ["up", "x"], ["up", "2", "--rate", "fast"], ["up", "2", "--rate"],
    ["up", "2", "--delay", "soon"], ["up", "2", "--bogus"], ["frobnicate"], ["down", "extra"],
])
def test_usage_errors_are_one_line_exit_2(args):
    prefix = _prefix("u")
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, "TESTBED_PREFIX": prefix}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    if REASON is None:
        assert _ours(prefix) == []


def test_bad_prefix_is_refused():
    proc = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True,
                          env={**os.environ, "TESTBED_PREFIX": "eth0; rm"}, timeout=60)
    assert proc.returncode == 2 and "TESTBED_PREFIX" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_without_root_one_line_exit_2():
    # the unprivileged user runs a copy in a world-readable folder: the checkout itself may sit in a folder
    # only root can enter (a CI clone under mktemp -d is 0700)
    folder = Path(tempfile.mkdtemp(prefix="testbed-noroot-"))
    try:
        folder.chmod(0o755)
        script = folder / SCRIPT.name
        shutil.copy2(SCRIPT, script)
        script.chmod(0o755)
        before = _root_state()
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script), "up", "2"],
                              capture_output=True, text=True, timeout=60, cwd=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 2 and "root" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _root_state() == before


def _netem_available() -> bool:
    """Checked independently of the script: a netem qdisc on loopback in a throw-away namespace."""
    ns = _prefix("n")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                               "delay", "1ms"], capture_output=True).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns])


@needs_testbed
def test_delay_needs_netem_and_is_never_faked():
    bed = Hosts(_prefix("d"))
    try:
        proc = bed.script("up", "2", "--delay", "5ms", check=False)
        if _netem_available():
            assert proc.returncode == 0, proc.stderr
            assert "netem delay 5ms" in bed.script("status").stdout
        else:
            assert proc.returncode == 2 and "netem" in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
            assert _ours(bed.prefix) == []  # refused before anything was made
    finally:
        bed.down()


@needs_testbed
def test_up_converges_and_down_restores_the_root_namespace():
    before = _root_state()
    bed = Hosts(_prefix("i"))
    try:
        bed.up(2)
        for i in range(2):  # loopback up, one link with the test-bed address, nothing else
            assert bed.interfaces(i) == {"lo": ["127.0.0.1", "::1"], "eth0": [bed.addr(i)]}
        # nothing of ours carries an address in the root namespace, and no route was added
        now = _root_state()
        assert now["addr"] == before["addr"] and now["route"] == before["route"]
        assert now["route6"] == before["route6"]
        sleeper = subprocess.Popen(bed.on(0, ["sleep", "300"]))
        bed.up(2)  # again: no error, same hosts, the process on host 0 keeps running
        bed.up(3, "--rate", "100mbit")
        status = bed.script("status").stdout
        assert [ln.split()[:2] for ln in status.splitlines()[1:]] == [
            [bed.ns(i), f"{bed.addr(i)}/24"] for i in range(3)]
        assert status.count("tbf rate 100Mbit") == 6  # both ends of 3 links
        bed.up(2)  # shrinks: host 2 removed, shaping removed
        assert [ln.split()[0] for ln in bed.script("status").stdout.splitlines()[1:]] == [bed.ns(0), bed.ns(1)]
        assert "tbf" not in bed.script("status").stdout
        assert sleeper.poll() is None
        probe = subprocess.run(bed.on(1, [PY, "-c", "import socket; socket.create_connection(('198.18.0.1', 9), 3)"]),
                               capture_output=True, text=True)
        assert "refused" in probe.stderr  # host 1 reaches host 0 (nothing listens on port 9: refused, not unreachable)
        names = subprocess.run(bed.on(1, ["getent", "hosts", bed.ns(0)]), capture_output=True, text=True).stdout
        assert names.split()[0] == bed.addr(0)  # every host resolves every host's name
    finally:
        bed.down()
    sleeper.wait(timeout=30)
    assert _ours(bed.prefix) == [] and not any(Path("/etc/netns").glob(f"{bed.prefix}*"))
    assert bed.script("down").returncode == 0  # idempotent
    assert _root_state() == before


@needs_testbed
def test_failed_up_removes_what_it_made():
    bed = Hosts(_prefix("f"))
    # a link that has the bridge's name but is no bridge (a veth): up fails when it attaches the first host
    subprocess.run(["ip", "link", "add", f"{bed.prefix}br", "type", "veth", "peer", "name", f"{bed.prefix}x"],
                   check=True)
    try:
        proc = bed.script("up", "2", check=False)
        assert proc.returncode == 1 and "removing the test-bed" in proc.stderr
        assert _ours(bed.prefix) == []
    finally:
        bed.down()


# ------------------------------------------------------------------------------------------ shaping
def _sent_bytes(argv: list[str]) -> int:
    """Bytes the tbf qdisc of a link has sent (``tc -s qdisc show``)."""
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    block = out[out.index("qdisc tbf"):]
    return int(re.search(r"Sent (\d+) bytes", block).group(1))


def _throughput(bed: Hosts, src: int, dst: int, seconds: float = 3.0) -> dict:
    recv = subprocess.Popen(bed.on(dst, [PY, str(NETPERF), "recv", "--bind", bed.addr(dst), "--timeout", "30"]),
                            stdout=subprocess.PIPE, text=True)
    try:
        send = subprocess.run(bed.on(src, [PY, str(NETPERF), "send", "--to", bed.addr(dst), "--seconds",
                                           str(seconds), "--timeout", "30"]), capture_output=True, text=True,
                              timeout=60)
        assert send.returncode == 0, send.stderr
        out, _ = recv.communicate(timeout=60)
    finally:
        recv.kill()
    return json.loads(out)


@needs_testbed
def test_rate_shapes_both_directions_of_every_link():
    with hosts_up(2, "--rate", "50mbit", prefix=_prefix("r")) as bed:
        tc_out = bed.on(0, ["tc", "-s", "qdisc", "show", "dev", "eth0"])  # host 0 -> bridge
        tc_in = ["tc", "-s", "qdisc", "show", "dev", f"{bed.prefix}v1"]  # bridge -> host 1
        out0, in0 = _sent_bytes(tc_out), _sent_bytes(tc_in)
        there = _throughput(bed, 0, 1)
        back = _throughput(bed, 1, 0)
        print(f"\n50mbit link: {there['mbit_per_s']} Mbit/s host0->host1, {back['mbit_per_s']} Mbit/s back")
        for r in (there, back):
            assert 0.70 * 50 <= r["mbit_per_s"] <= 1.05 * 50, r
        # the traffic went through the token buckets on both ends of the path
        assert _sent_bytes(tc_out) - out0 >= there["bytes"]
        assert _sent_bytes(tc_in) - in0 >= there["bytes"]
        bed.up(2)  # the same hosts, unshaped: the shaper, not the machine, set the rate above
        free = _throughput(bed, 0, 1, seconds=1.0)
        print(f"unshaped: {free['mbit_per_s']} Mbit/s")
        assert free["mbit_per_s"] > 3 * 50


# ------------------------------------------------------------------------------------------ torchrun
def _torchrun(cfg_path, run_dir, env: dict, argv_prefix: list[str] | None = None) -> subprocess.Popen:
    argv = [*(argv_prefix or []), str(SCRIPT.parent / "torchrun.sh"), str(cfg_path), str(run_dir)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHON": PY, "OMP_NUM_THREADS": "1", **env})


@needs_testbed
def test_torchrun_two_hosts_equals_single_host(tmp_path):
    from distsched.sync import free_port

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(two_worker_config("tb")))
    with hosts_up(2, prefix=_prefix("t")) as bed:
        # the single-host reference (2 processes on 127.0.0.1) runs meanwhile, in the root namespace
        single = _torchrun(cfg_path, tmp_path / "single", {"NPROC_PER_NODE": "2", "MASTER_PORT": str(free_port())})
        common = {"NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": bed.addr(0), "MASTER_PORT": "29400",
                  "RUN_ID": "testbed"}
        hosts = [_torchrun(cfg_path, tmp_path / "two_hosts", {**common, "NODE_RANK": str(i), "LOCAL_ADDR": bed.addr(i)},
                           bed.on(i, [])) for i in range(2)]
        seen = watch(bed, hosts, timeout_s=400)
        outs = [p.communicate(timeout=400)[0] for p in [*hosts, single]]
        for p, out in zip([*hosts, single], outs):
            assert p.returncode == 0, out[-3000:]
        assert_sockets_on_testbed(bed, seen)

    assert_same_run(tmp_path / "two_hosts", tmp_path / "single")
