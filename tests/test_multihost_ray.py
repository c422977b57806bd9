"""Ray across 2 hosts of the test-bed (launch/testbed.sh): a head on host 0, a worker node on host 1
joining it with the cluster's token (token authentication on), then from host 0:

* ``distsched train --address`` places one Ray Train worker on each host (read from Ray's actor
  table) and gives bit for bit the final parameters and metrics of the 2-process single-host run;
* ``distsched simulate --address`` runs its client actors on both hosts with the same rounds,
  metrics and accuracy as the same simulation on an embedded single-host cluster;
* every socket of the runs is on a test-bed address or a host's own loopback, and nothing of them
  listens in the root namespace.

Slow (a 2-node Ray cluster starts in tens of seconds); the path is covered fast by
tests/test_testbed.py (2 hosts, torchrun) and tests/test_cluster_train.py (``--address``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from testbed_support import (
    ROOT,
    Hosts,
    assert_same_run,
    assert_sockets_on_testbed,
    hosts_up,
    kill_all,
    records_without_times,
    two_worker_config,
    unavailable,
    watch,
)

REASON = unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.skipif(REASON is not None, reason=str(REASON))]
PY = sys.executable
RAY = str(Path(PY).parent / "ray")
PORT = 6379
FED = ROOT / "examples" / "fed_digits.yaml"
FED_ARGS = ["--rounds", "2", "--num-actors", "2", "--no-progress", "--json"]  # the summary as JSON


#: Ray gives a starting node 30 s (hard-coded in ray/_private/node.py), which a busy 2-core machine can miss
SLOW_START = "timed out during startup"


def _run(argv: list[str], env: dict, timeout: float = 300, retry_ns: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv``; a Ray node that missed its start-up deadline is retried (twice), after ending what it
    left running in its namespace ``retry_ns``."""
    for _ in range(3):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode == 0 or retry_ns is None or SLOW_START not in proc.stdout + proc.stderr:
            break
        kill_all(Hosts.pids(retry_ns))
    assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def _reference(argv: list[str], env: dict) -> str:
    """A single-host reference run's output; an embedded Ray that missed its start-up deadline is retried."""
    for _ in range(3):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode == 0 or SLOW_START not in proc.stdout + proc.stderr:
            break
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def cluster():
    """Hosts 0 and 1, a Ray head on 0 and a worker node on 1, with a token of their own; references
    (no Ray for training, an embedded single-host cluster for the simulation) computed once it is up."""
    tmp = Path(tempfile.mkdtemp(prefix="dsbray", dir="/tmp"))  # short: Ray's socket paths must fit
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_raylet_start_wait_time_s": "120",  # a node's start-up on a busy machine (Ray's default: 30 s)
           # Ray's token authentication on, with this cluster's own token (not ~/.ray/auth_token)
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    cfg_path = tmp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(two_worker_config("rayhosts")))
    ref_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    try:
        with hosts_up(2, prefix=f"dsr{os.getpid() % 10000}") as bed:
            # no GLOO_SOCKET_IFNAME: distsched binds gloo to the interface of each worker's node address
            # (this machine's hostname resolves to 127.0.0.1, where gloo would bind otherwise)
            common = ["--num-cpus", "1", "--object-store-memory", str(200 * 1024**2), "--disable-usage-stats"]
            _run(bed.on(0, [RAY, "start", "--head", f"--node-ip-address={bed.addr(0)}", f"--port={PORT}",
                            "--include-dashboard=false", f"--temp-dir={tmp / 'ray'}", *common]),
                 env, retry_ns=bed.ns(0))
            _run(bed.on(1, [RAY, "start", f"--address={bed.addr(0)}:{PORT}", f"--node-ip-address={bed.addr(1)}",
                            *common]), env, retry_ns=bed.ns(1))
            # the references run once the cluster is up (Ray gives a node 30 s to start, on a busy machine)
            _reference([PY, "-m", "distsched", "train", str(cfg_path), "--launcher", "processes", "--run-dir",
                        str(tmp / "ref_train")], ref_env)
            out = _reference([PY, "-m", "distsched", "simulate", str(FED), *FED_ARGS, "--out", str(tmp / "ref_sim")],
                             ref_env)
            sim_ref = json.loads(out[out.index("{"):])
            yield {"bed": bed, "env": env, "tmp": tmp, "cfg": cfg_path, "address": f"{bed.addr(0)}:{PORT}",
                   "ref_train": tmp / "ref_train", "ref_sim": Path(sim_ref["run_dir"])}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _actors_by_class(c: dict) -> dict[str, list[str]]:
    """Ray's actor table, read on host 0: class name -> the node address of each of its actors."""
    code = ("import json, ray; from ray._private.state import actors\n"
            f"ray.init(address={c['address']!r}, log_to_driver=False)\n"
            "out = {}\n"
            "for a in actors().values(): out.setdefault(a['ActorClassName'], []).append(a['Address']['IPAddress'])\n"
            "print(json.dumps(out))")
    out = _run(c["bed"].on(0, [PY, "-c", code]), c["env"]).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_ray_token_is_required(cluster):
    """The cluster refuses a driver without its token (token authentication is really on)."""
    env = {**cluster["env"], "RAY_AUTH_TOKEN_PATH": str(cluster["tmp"] / "missing")}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # a wrong token
    code = f"import ray; ray.init(address={cluster['address']!r}); print(ray.cluster_resources())"
    proc = subprocess.run(cluster["bed"].on(0, [PY, "-c", code]), capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "CPU" not in proc.stdout


def test_ray_train_one_worker_per_host_same_result(cluster):
    bed, run_dir = cluster["bed"], cluster["tmp"] / "ray_train"
    argv = [PY, "-m", "distsched", "train", str(cluster["cfg"]), "--address", cluster["address"], "--run-dir",
            str(run_dir), "--no-progress"]
    proc = subprocess.Popen(bed.on(0, argv), env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = watch(bed, [proc], timeout_s=600)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out[-3000:]
    assert_sockets_on_testbed(bed, seen)
    placed = _actors_by_class(cluster)["RayTrainWorker"]
    assert sorted(placed) == [bed.addr(0), bed.addr(1)]  # one Ray Train worker on each host

    assert_same_run(run_dir, cluster["ref_train"])


def test_ray_simulate_across_hosts_same_result(cluster):
    bed = cluster["bed"]
    argv = [PY, "-m", "distsched", "simulate", str(FED), "--address", cluster["address"], *FED_ARGS, "--out",
            str(cluster["tmp"] / "ray_sim")]
    proc = subprocess.Popen(bed.on(0, argv), env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = watch(bed, [proc], timeout_s=600)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert_sockets_on_testbed(bed, seen)
    summary = json.loads(out[out.index("{"):])
    placed = _actors_by_class(cluster)["ClientWorker"]
    assert sorted(placed) == [bed.addr(0), bed.addr(1)]  # one client actor on each host

    ref = json.loads((cluster["ref_sim"] / "summary.json").read_text())
    assert summary["rounds"] == ref["rounds"] == 2 and summary["client_updates"] == ref["client_updates"]
    assert summary["final_test_acc"] == ref["final_test_acc"]
    assert records_without_times(Path(summary["run_dir"])) == records_without_times(cluster["ref_sim"])
