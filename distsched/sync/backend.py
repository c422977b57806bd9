"""torch.distributed set-up, in one place: the backend chosen from the hardware, the NCCL error
default, and a rendezvous that listens on the rendezvous address only.

torch's own ``tcp://`` / ``env://`` rendezvous starts rank 0's TCPStore on *every* interface, and the
store has no authentication. :func:`init_process_group` instead hands torch a listening socket bound
to the rendezvous host (``TCPStore(master_listen_fd=...)``), and binds gloo's (and NCCL's) sockets to
the interface that holds this process's address (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME``,
unless already set). A single-node run (host 127.0.0.1) therefore opens nothing beyond loopback.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from datetime import timedelta
from urllib.parse import urlparse

from distsched._checks import check_choice, check_int, check_positive

LOOPBACK = "127.0.0.1"
BACKENDS = ("gloo", "nccl")
#: environment defaults for NCCL (a failed peer aborts the job instead of hanging it); set here only
NCCL_ENV_DEFAULTS = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
_SIOCGIFADDR = 0x8915


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, ``"gloo"`` otherwise."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (for a ``tcp://127.0.0.1:<port>`` rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def interface_of(address: str) -> str | None:
    """Name of this machine's network interface that holds the IPv4 ``address`` (``"lo"`` for
    127.0.0.1), or None when no local interface has it (Linux ``SIOCGIFADDR``)."""
    try:
        wanted = socket.inet_aton(socket.gethostbyname(address))
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                got = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))[20:24]
            except OSError:
                continue
            if got == wanted:
                return name
    return None


def rendezvous_address(init_method: str) -> tuple[str, int]:
    """``(host, port)`` of a ``tcp://HOST:PORT`` URL, or of ``env://`` (``MASTER_ADDR``, default
    127.0.0.1, and ``MASTER_PORT``)."""
    url = urlparse(init_method)
    if url.scheme == "tcp" and url.hostname and url.port is not None:
        return url.hostname, url.port
    if url.scheme == "env":
        if "MASTER_PORT" not in os.environ:
            raise ValueError("env:// rendezvous needs MASTER_PORT in the environment")
        return os.environ.get("MASTER_ADDR", LOOPBACK), int(os.environ["MASTER_PORT"])
    raise ValueError(f"init_method must be 'tcp://HOST:PORT' or 'env://', got {init_method!r}")


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _bind_transports(local_addr: str) -> None:
    name = interface_of(local_addr)
    if name is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", name)


def init_process_group(
    rank: int,
    world_size: int,
    init_method: str = "env://",
    backend: str | None = None,
    timeout_s: float = 300.0,
    *,
    local_rank: int | None = None,
    local_addr: str | None = None,
) -> str:
    """Join the default process group; returns the backend used.

    ``init_method``: ``tcp://HOST:PORT`` or ``env://``. Rank 0 serves the store on ``HOST`` only
    (under torchrun's agent store, ``TORCHELASTIC_USE_AGENT_STORE=True``, every rank is a client).
    ``local_addr`` (default ``HOST``): this process's address; gloo/NCCL bind to its interface.
    ``backend=None`` picks :func:`default_backend`. With NCCL, :data:`NCCL_ENV_DEFAULTS` are set
    unless already set and the process uses CUDA device ``local_rank % device_count`` (default:
    ``rank``).
    """
    import torch
    import torch.distributed as dist

    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank!r}")
    check_positive("timeout_s", timeout_s)
    backend = default_backend() if backend is None else check_choice("backend", backend, BACKENDS)
    host, port = rendezvous_address(init_method)
    _bind_transports(local_addr or host)
    if backend == "nccl":
        for key, value in NCCL_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        torch.cuda.set_device((rank if local_rank is None else local_rank) % torch.cuda.device_count())
    timeout = timedelta(seconds=timeout_s)
    serve = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    listener = _listening_socket(host, port) if serve else None
    try:
        store = dist.TCPStore(host, port, world_size, serve, timeout, multi_tenant=True,
                              master_listen_fd=listener.fileno() if listener else None)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    if listener is not None:
        listener.detach()  # the store owns the descriptor now
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return backend
