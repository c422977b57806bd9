"""Start an embedded local Ray cluster with safe defaults, or join an existing one.

Local default: bound to 127.0.0.1, the number of CPUs the run may use, no dashboard unless asked,
a bounded object store, and Ray's token authentication left on (Ray's own default).

Ray replaces a loopback node address by the machine's routable one unless it is told that this is a
single-machine cluster; for the embedded default we tell it so (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
Ray's own switch for loopback-only clusters), so its GCS, raylet and workers listen on 127.0.0.1 and
Ray Train's torch.distributed rendezvous uses 127.0.0.1 too. Joining a cluster (``address=...``)
leaves Ray's address resolution alone.

Joining: Ray enables token authentication for an explicit address only when ``RAY_AUTH_MODE=token``
is set; :func:`connect` sets it whenever a token is at hand (``token_file``, ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, Ray's own variables and default path), and checks
first that ``HOST:PORT`` answers (one line in seconds instead of minutes of retries). The embedded
default ignores ``RAY_ADDRESS`` and a ``RAY_AUTH_MODE`` other than ``token`` (saying so in one line) and
the cluster that ``ray start`` recorded in ``<tmp>/ray/ray_current_cluster`` (``ray.init(address="local")``):
only an explicit address joins a cluster.
The token file is kept at mode 0600. A watchdog process (:mod:`distsched.cluster.watchdog`) stops
the embedded cluster if the driver dies without shutting it down.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from pathlib import Path

from distsched._checks import check_int

LOOPBACK = "127.0.0.1"
_LOOPBACK_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: the embedded cluster's object store unless a caller asks for more
DEFAULT_OBJECT_STORE_BYTES = 512 * 1024**2
#: seconds to wait for a cluster's GCS port to accept a connection
REACH_TIMEOUT_S = 5.0
_watchdog = None  # the watchdog process of an embedded cluster (kept referenced)


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
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
    log_to_driver: bool = False,
    token_file: str | os.PathLike | None = None,
) -> dict:
    """Join ``address`` (``"auto"``, ``"HOST:PORT"`` or ``"ray://..."``), or start an embedded cluster.

    ``token_file``: the cluster's authentication token (default: Ray's ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``). Returns the Ray context info. Calling it again
    while Ray is initialized is a no-op.
    """
    global _watchdog
    import ray

    if ray.is_initialized():
        return {"address": ray.get_runtime_context().gcs_address, "reused": True}
    node_ip = None
    if address:
        check_reachable(address)
        _use_token(token_file)
        if _is_loopback(address):  # a cluster on this machine's loopback: this node is 127.0.0.1 too
            _use_loopback_only()
            node_ip = LOOPBACK
    else:
        ignored = os.environ.pop("RAY_ADDRESS", None)
        if ignored:
            sys.stderr.write(f"distsched: ignoring RAY_ADDRESS={ignored} (pass --address to join a cluster)\n")
        _use_loopback_only()
    # Worker processes inherit this: one intra-op thread each unless the user says otherwise.
    env = {
        "env_vars": {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            # the run's extra loggers (--logger mlflow): rank 0 may run on a node the driver did not start
            **{k: os.environ[k] for k in ("DISTSCHED_LOGGERS",) if k in os.environ},
        }
    }
    if address:
        ctx = ray.init(address=address, runtime_env=env, log_to_driver=log_to_driver, _node_ip_address=node_ip)
    else:
        cpus = check_int("num_cpus", num_cpus if num_cpus is not None else available_cpus(), 1)
        _keep_token_auth()
        _private_token()
        # Token authentication stays on (Ray's default); only its start-up notice that it is on is muted.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ctx = ray.init(
            address="local",  # a new cluster, even when `ray start` left one recorded on this machine
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
        from distsched.cluster.watchdog import start_watchdog

        _watchdog = start_watchdog()
    _tighten(_token_path())
    return {"address": ctx.address_info.get("gcs_address"), "reused": False}


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Raise ConnectionError (one line) when ``HOST:PORT`` (or ``ray://HOST:PORT``) accepts no TCP
    connection within ``timeout_s``; ``"auto"`` is left to Ray."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"no Ray cluster answers at {address} ({exc.strerror or exc})") from None


def _is_loopback(address: str) -> bool:
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _use_token(token_file: str | os.PathLike | None) -> None:
    """Ray's documented switches: ``RAY_AUTH_TOKEN_PATH`` and ``RAY_AUTH_MODE=token`` (when a token
    exists and the mode is not set explicitly)."""
    if token_file is not None:
        path = Path(token_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"token file not found: {path}")
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(path.resolve())
    if "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or _token_path().is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config  # Ray re-reads its config, as its own _enable_token_auth does

        Config.initialize("")


def _keep_token_auth() -> None:
    """The embedded cluster keeps Ray's token authentication: an inherited ``RAY_AUTH_MODE`` other than
    ``token`` (Ray's opt-out, ``disabled``) is overridden, saying so in one line, as ``RAY_ADDRESS`` is ignored."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is None or mode.lower() == "token":
        return
    sys.stderr.write(f"distsched: ignoring RAY_AUTH_MODE={mode}: the local cluster keeps token authentication\n")
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config  # Ray re-reads its config, as its own _enable_token_auth does

    Config.initialize("")


def _private_token() -> None:
    """Create Ray's default token file (mode 0600 from the start) before Ray would write it with the
    umask's mode, when token authentication is on and no token exists yet."""
    if os.environ.get("RAY_AUTH_MODE", "token") != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = _token_path()
    if path.exists():
        return
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(generate_new_authentication_token())


def _tighten(path: Path) -> None:
    """Mode 0600 for a token file of ours that others may read."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
    except OSError:
        pass


def _use_loopback_only() -> None:
    """Make Ray keep 127.0.0.1 as this node's address (env for its subprocesses, constant if imported)."""
    os.environ[_LOOPBACK_ONLY_ENV] = "0"
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False
