"""A pool of Ray actors running :class:`ClientWorker`, with replacement of dead actors.

Chunk ``i`` goes to actor ``i mod n``. If an actor dies (killed, OOM, node lost) its chunk is run
again on a fresh replacement actor and the round completes; since a chunk's result depends only
on the chunk (clients, round, seed, global model), the round's result is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distsched._checks import check_int, check_non_negative


class ActorPool:
    def __init__(
        self,
        num_actors: int,
        init_args: tuple[Any, ...],
        *,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_chunk_retries: int = 3,
    ) -> None:
        import ray

        from distsched.federated.worker import ClientWorker

        check_int("num_actors", num_actors, 1)
        check_non_negative("num_cpus", num_cpus)
        check_non_negative("num_gpus", num_gpus)
        self._cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(ClientWorker)
        self._init_args = init_args
        self.max_chunk_retries = max_chunk_retries
        self.actors = [self._cls.remote(*init_args) for _ in range(num_actors)]
        self.failures = 0
        ray.get([a.ping.remote() for a in self.actors])

    def __len__(self) -> int:
        return len(self.actors)

    def run(
        self,
        tasks: Sequence[Any],
        params_ref: Any,
        on_submitted: Callable[[ActorPool], None] | None = None,
    ) -> tuple[list[Any], int]:
        """Results of ``worker.run(task, params)`` for each task, in task order, and the number of
        actor failures survived in this call."""
        import ray
        from ray.exceptions import RayActorError

        pending: dict[Any, tuple[int, int, int, Any]] = {}
        for i, task in enumerate(tasks):
            a = i % len(self.actors)
            pending[self.actors[a].run.remote(task, params_ref)] = (i, a, 0, self.actors[a])
        if on_submitted is not None:
            on_submitted(self)
        results: list[Any] = [None] * len(tasks)
        failures = 0
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            i, a, tries, handle = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except RayActorError:
                failures += 1
                if tries >= self.max_chunk_retries:
                    raise
                self._replace(a, handle)
                pending[self.actors[a].run.remote(tasks[i], params_ref)] = (i, a, tries + 1, self.actors[a])
        self.failures += failures
        return results, failures

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

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
