"""Start an embedded local Ray cluster with safe defaults, or join an existing one.

Local default: bound to 127.0.0.1, the number of CPUs the run may use, no dashboard unless asked,
a bounded object store, and Ray's token authentication left on (Ray's own default).

Ray replaces a loopback node address by the machine's routable one unless it is told that this is a
single-machine cluster; for the embedded default we tell it so (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
Ray's own switch for loopback-only clusters), so its GCS, raylet and workers listen on 127.0.0.1 and
Ray Train's torch.distributed rendezvous uses 127.0.0.1 too. Joining a cluster (``address=...``)
leaves Ray's address resolution alone.
"""

from __future__ import annotations

import logging
import os

from distsched._checks import check_int

LOOPBACK = "127.0.0.1"
_LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2


def available_cpus() -> int:
    """CPUs this process may use (respects affinity / cgroup-restricted sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    dashboard: bool = False,
    object_store_bytes: int = _DEFAULT_OBJECT_STORE_BYTES,
    log_to_driver: bool = False,
) -> dict:
    """Join ``address`` (``"auto"``, ``"HOST:PORT"`` or ``"ray://..."``), or start an embedded cluster.

    Returns the Ray context info. Calling it again while Ray is initialized is a no-op.
    """
    if not address:
        _use_loopback_only()
    import ray

    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address, "reused": True}
    # Worker processes inherit this: one intra-op thread each unless the user says otherwise.
    env = {
        "env_vars": {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            # the run's extra loggers (--logger mlflow): rank 0 may run on a node the driver did not start
            **{k: os.environ[k] for k in ("DISTSCHED_LOGGERS",) if k in os.environ},
        }
    }
    if address:
        ctx = ray.init(address=address, runtime_env=env, log_to_driver=log_to_driver)
    else:
        cpus = check_int("num_cpus", num_cpus if num_cpus is not None else available_cpus(), 1)
        # Token authentication stays on (Ray's default); only its start-up notice that it is on is muted.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ctx = ray.init(
            num_cpus=cpus,
            include_dashboard=dashboard,
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            object_store_memory=object_store_bytes,
            runtime_env=env,
            log_to_driver=log_to_driver,
            configure_logging=True,
            logging_level="warning",
        )
    return {"address": ctx.address_info.get("gcs_address"), "reused": False}


def _use_loopback_only() -> None:
    """Make Ray keep 127.0.0.1 as this node's address (env for its subprocesses, constant if imported)."""
    os.environ[_LOOPBACK_ONLY_ENV] = "0"
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
