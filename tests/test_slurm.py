"""launch/slurm_torchrun.sbatch and launch/slurm_ray.sbatch, run for real on a 2-node SLURM cluster
made on this machine: Debian's slurm-wlm (slurmctld and one slurmd per test-bed host, in the
foreground) with munge, on 2 hosts of launch/testbed.sh.

Each slurmd runs in its host's network namespace with a UTS namespace of its own, so the node is
named after the host (``hostname`` gives ``<prefix>h<i>``, which resolves to its test-bed address, as
a cluster's DNS would): the scripts' ``scontrol show hostnames`` / ``hostname --ip-address`` see what
they see on a real cluster. slurmd runs under ``nsenter --net`` (not ``ip netns exec``, which would
remount /sys and hide the cgroup file systems slurmd insists on), with the host's /etc/hosts bound in.

Both jobs must give bit for bit the final parameters and metrics of the 2-process single-host run.
Slow. The set-up installs slurmctld, slurmd, slurm-client and munge with apt-get when missing (root),
or skips with the reason.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from testbed_support import ROOT, STEPS, assert_same_run, hosts_up, kill_all, two_worker_config, unavailable

REASON = unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.skipif(REASON is not None, reason=str(REASON))]
PY = sys.executable
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "sinfo", "munged", "mungekey"]


def _missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _install() -> str | None:
    """Install SLURM and munge when missing; the reason when they are not there afterwards."""
    if not _missing():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(_missing())} missing) and apt-get cannot install it here"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # a stale package index: refresh it once
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if _missing():
        return f"apt-get could not install {' '.join(PACKAGES)}: {proc.stderr.strip()[-300:]}"
    return None


def _conf(tmp: Path, prefix: str, n: int) -> str:
    nodes = "\n".join(f"NodeName={prefix}h{i} NodeAddr=198.18.0.{i + 1} CPUs={os.cpu_count()} RealMemory=1000 "
                      "State=UNKNOWN" for i in range(n))
    return f"""ClusterName=distsched
SlurmctldHost={prefix}h0(198.18.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={tmp}/munge/munge.sock
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool/%n
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.%n.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _on_node(prefix: str, i: int, argv: list[str]) -> list[str]:
    """``argv`` as node ``i``: its network namespace, its own hostname and /etc/hosts, the machine's /sys."""
    ns = f"{prefix}h{i}"
    inner = f"mount --bind /etc/netns/{ns}/hosts /etc/hosts && hostname {ns} && exec \"$@\""
    return ["nsenter", f"--net=/run/netns/{ns}", "unshare", "--uts", "--mount", "sh", "-c", inner, "sh", *argv]


@pytest.fixture(scope="module")
def slurm():
    reason = _install()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="dsbslurm", dir="/tmp"))
    for sub in ("munge", "state", "log"):
        (tmp / sub).mkdir()
    (tmp / "munge").chmod(0o711)
    daemons: list[subprocess.Popen] = []
    prefix = f"dss{os.getpid() % 10000}"
    try:
        subprocess.run(["mungekey", "-c", "-k", str(tmp / "munge" / "munge.key")], check=True, capture_output=True)
        daemons.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--socket={tmp}/munge/munge.sock", f"--key-file={tmp}/munge/munge.key",
             f"--pid-file={tmp}/munge/munged.pid", f"--log-file={tmp}/munge/munged.log",
             f"--seed-file={tmp}/munge/seed", "--num-threads=10"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        conf = tmp / "slurm.conf"
        conf.write_text(_conf(tmp, prefix, 2))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        with hosts_up(2, prefix=prefix) as bed:
            log = open(tmp / "log" / "daemons.out", "w")  # noqa: SIM115 (closed below)
            daemons.append(subprocess.Popen(_on_node(prefix, 0, ["slurmctld", "-D", "-f", str(conf)]), env=env,
                                            stdout=log, stderr=subprocess.STDOUT))
            for i in range(2):
                (tmp / "spool" / bed.ns(i)).mkdir(parents=True)
                daemons.append(subprocess.Popen(_on_node(prefix, i, ["slurmd", "-D", "-N", bed.ns(i), "-f", str(conf)]),
                                                env=env, stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 120
            while True:
                state = subprocess.run(bed.on(0, ["sinfo", "-h", "-o", "%T %D"]), capture_output=True, text=True,
                                       env=env).stdout.split()
                if state == ["idle", "2"]:
                    break
                if time.monotonic() > deadline or any(d.poll() is not None for d in daemons):
                    log.flush()
                    said = (tmp / "log" / "daemons.out").read_text()[-3000:]
                    pytest.fail(f"SLURM did not come up: sinfo {state}\n{said}")
                time.sleep(1)
            yield {"bed": bed, "env": env, "tmp": tmp}
            log.close()
    finally:
        kill_all([d.pid for d in daemons])
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(slurm):
    """The 2-process single-host run of the same config (no Ray, no SLURM)."""
    cfg_path = slurm["tmp"] / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(two_worker_config("slurm")))
    run_dir = slurm["tmp"] / "reference"
    proc = subprocess.run([PY, "-m", "distsched", "train", str(cfg_path), "--launcher", "processes", "--run-dir",
                           str(run_dir)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg_path, run_dir


def _sbatch(slurm: dict, script: str, args: list[str], extra_env: dict) -> str:
    out = slurm["tmp"] / f"{Path(script).stem}.out"
    env = {**slurm["env"], "PYTHONPATH": str(ROOT), "PYTHON": PY, "OMP_NUM_THREADS": "1", **extra_env}
    argv = ["sbatch", "--wait", "--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={out}",
            str(ROOT / "launch" / script), *args]
    for _ in range(2):  # Ray gives a starting node 30 s (hard-coded), which a busy 2-core machine can miss
        proc = subprocess.run(slurm["bed"].on(0, argv), capture_output=True, text=True, env=env, cwd=ROOT,
                              timeout=1200)
        text = out.read_text() if out.exists() else ""
        if proc.returncode == 0 or "timed out during startup" not in text:
            break
    if proc.returncode != 0:
        print(text[-8000:])  # the job's output (pytest -s)
    assert proc.returncode == 0, (proc.stderr[-2000:], text[-4000:])
    return text


def test_slurm_torchrun_two_nodes_equals_single_host(slurm, reference):
    cfg_path, ref = reference
    run_dir = slurm["tmp"] / "slurm_torchrun"
    out = _sbatch(slurm, "slurm_torchrun.sbatch", [str(cfg_path), str(run_dir)], {})
    assert f"step {STEPS}/{STEPS}" in out
    assert_same_run(run_dir, ref)


def test_slurm_ray_two_nodes_equals_single_host(slurm, reference):
    cfg_path, ref = reference
    token = slurm["tmp"] / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    run_dir = slurm["tmp"] / "slurm_ray"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_TEMP_DIR": str(slurm["tmp"] / "ray"),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_raylet_start_wait_time_s": "120"}
    out = _sbatch(slurm, "slurm_ray.sbatch", [str(cfg_path), "2", str(run_dir)], env)
    bed = slurm["bed"]
    assert f"Ray head: {bed.ns(0)} ({bed.addr(0)}:6379), workers: {bed.ns(1)}" in out
    assert_same_run(run_dir, ref)
