"""Ray Train's torch process group, joined through :func:`distsched.sync.init_process_group`.

Ray Train's own torch backend rendezvouses with ``env://`` at worker 0's node address, and torch
then serves rank 0's (unauthenticated) TCPStore on every interface. This backend uses the same
address and port but binds the store to that address only, and each worker's gloo/NCCL sockets to
the interface of its own node address: on the embedded cluster (node address 127.0.0.1) nothing
listens beyond loopback; on a joined cluster, only on the interface Ray's nodes talk over.
"""

from __future__ import annotations

import dataclasses

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend


def _join(rank: int, world_size: int, init_method: str, backend: str, timeout_s: float) -> None:
    import os

    import ray

    from distsched.sync import init_process_group

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    init_process_group(rank, world_size, init_method, backend, timeout_s, local_rank=local_rank,
                       local_addr=ray.util.get_node_ip_address())


class _BoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: BoundTorchConfig) -> None:  # noqa: ANN001 (Ray's type)
        import ray
        from ray.train._internal.utils import get_address_and_port
        from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
        from ray.train.torch.config import _set_torch_distributed_env_vars

        addr, port = worker_group.execute_single(0, get_address_and_port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        host = f"[{addr}]" if ":" in addr else addr
        futures = [
            worker_group.execute_single_async(  # positional: its own first parameter is named ``rank``
                i, _join, i, len(worker_group), f"tcp://{host}:{port}", backend_config.backend or "gloo",
                float(backend_config.timeout_s),
            )
            for i in range(len(worker_group))
        ]
        ray.get(futures)


@dataclasses.dataclass
class BoundTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group listens only on the rendezvous address's interface."""

    @property
    def backend_cls(self):  # noqa: ANN201 (Ray's API)
        return _BoundTorchBackend
