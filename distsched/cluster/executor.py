"""The federated simulation on a pool of Ray actors, each a :class:`~distsched.federated.ClientWorker`,
with replacement of dead actors; sized from the cluster's resources.

Chunk ``i`` goes to actor ``i mod n``. If an actor dies (killed, OOM, node lost) its chunk is run
again on a fresh replacement actor and the round completes; since a chunk's result depends only
on the chunk (clients, round, seed, global model), the round's result is unchanged.

The train arrays and the client index are put in the object store once; every actor reads them there
without a copy (numpy arrays of the object store are mapped read-only into each worker process), so the
data costs one copy per node however many actors run: the memory of 1,000,000 registered clients is
the driver's copy plus the store's, not one more per actor. An embedded cluster's object store is sized
to hold them (:func:`object_store_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distsched._checks import check_int, check_non_negative
from distsched.federated import ChunkResult, ChunkTask, ClientWorker, WorkerSetup


class ActorPool:
    """``num_actors`` Ray actors running :class:`ClientWorker`; an :class:`~distsched.federated.Executor`.

    ``on_submitted(pool)`` is called once a round's chunks are on the actors (a test hook)."""

    def __init__(
        self,
        num_actors: int,
        setup: WorkerSetup,
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_chunk_retries: int = 3,
        on_submitted: Callable[[ActorPool], None] | None = None,
    ) -> None:
        import ray

        check_int("num_actors", num_actors, 1)
        check_non_negative("num_cpus", num_cpus)
        check_non_negative("num_gpus", num_gpus)
        self._cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(ClientWorker)
        x, y, order, offsets, spec, work, seed = setup.args()
        device = "cuda" if num_gpus > 0 else "cpu"
        self._init_args = (ray.put(x), ray.put(y), ray.put(order), ray.put(offsets), spec, work, seed, 1, device)
        self.max_chunk_retries = max_chunk_retries
        self.on_submitted = on_submitted
        self.actors = [self._cls.remote(*self._init_args) for _ in range(num_actors)]
        self.failures = 0
        ray.get([a.ping.remote() for a in self.actors])

    @property
    def size(self) -> int:
        return len(self.actors)

    def __len__(self) -> int:
        return len(self.actors)

    def run(self, tasks: Sequence[ChunkTask], params: np.ndarray) -> list[ChunkResult]:
        """Results of ``worker.run(task, params)`` for each task, in task order; a dead actor's chunk is
        re-run on its replacement (counted in ``failures``)."""
        import ray
        from ray.exceptions import RayActorError

        params_ref = ray.put(params)
        pending: dict[Any, tuple[int, int, int, Any]] = {}
        for i, task in enumerate(tasks):
            a = i % len(self.actors)
            pending[self.actors[a].run.remote(task, params_ref)] = (i, a, 0, self.actors[a])
        if self.on_submitted is not None:
            self.on_submitted(self)
        results: list[Any] = [None] * len(tasks)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i, a, tries, handle = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except RayActorError:
                self.failures += 1
                if tries >= self.max_chunk_retries:
                    raise
                self._replace(a, handle)
                pending[self.actors[a].run.remote(tasks[i], params_ref)] = (i, a, tries + 1, self.actors[a])
        return results

    def _replace(self, a: int, dead: Any) -> None:
        """Start a new actor in slot ``a`` unless the dead handle was already replaced there."""
        import ray

        if self.actors[a] is not dead:
            return
        ray.kill(dead, no_restart=True)
        self.actors[a] = self._cls.remote(*self._init_args)

    def max_rss_kib(self) -> list[int]:
        import ray

        return ray.get([a.ping.remote() for a in self.actors])

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []


def object_store_bytes(setup: WorkerSetup) -> int:
    """Object store of an embedded cluster for ``setup``: :data:`~distsched.cluster.local.DEFAULT_OBJECT_STORE_BYTES`,
    or more when the shared arrays need it: ``1.25 * bytes(x, y, order, offsets) + 256 MiB`` (room for
    the rounds' models and results)."""
    from distsched.cluster.local import DEFAULT_OBJECT_STORE_BYTES

    arrays = sum(int(np.asarray(a).nbytes) for a in (setup.x, setup.y, setup.order, setup.offsets))
    return max(DEFAULT_OBJECT_STORE_BYTES, int(1.25 * arrays) + 256 * 1024**2)


def ray_executor(
    address: str | None = None, *, on_submitted: Callable[[ActorPool], None] | None = None
) -> Callable[[WorkerSetup, int | None], ActorPool]:
    """An executor factory for :meth:`distsched.federated.Simulation.run`: joins ``address`` (or starts
    the embedded cluster) and sizes the pool: ``num_actors`` (default one per CPU of the cluster), each
    with ``min(1, CPUs / actors)`` CPUs and an equal share of the cluster's GPUs."""

    def make(setup: WorkerSetup, num_actors: int | None) -> ActorPool:
        import ray

        from distsched.cluster.local import connect

        connect(address, object_store_bytes=object_store_bytes(setup))
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0.0))
        n = num_actors or max(1, int(cpus))
        return ActorPool(n, setup, num_cpus=min(1.0, cpus / n), num_gpus=gpus / n if gpus else 0.0,
                         on_submitted=on_submitted)

    return make
