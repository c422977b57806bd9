"""Who trains a round's chunks: the simulation is handed an executor and never knows where it runs.

An executor holds a :class:`~distsched.federated.worker.ClientWorker` per slot (data and client index
resident) and runs ``worker.run(task, params)`` for every task of a round, returning the results in
task order. :class:`InProcessExecutor` (here) runs them one after another in this process;
``distsched.cluster.ray_executor`` runs them on a pool of Ray actors. A chunk's result depends only on
the chunk (clients, round, seed, global model), so both give the same results bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from distsched._checks import check_int
from distsched.federated.client import LocalWork
from distsched.federated.worker import ChunkResult, ChunkTask, ClientWorker


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What every worker keeps resident: the train arrays, the client index as CSR (client ``k`` owns
    ``order[offsets[k]:offsets[k+1]]``), the model spec (:func:`distsched.data.build_model` keywords),
    the local-work rule and the run's seed."""

    x: np.ndarray
    y: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    model_spec: Mapping[str, Any]
    local_work: LocalWork
    seed: int

    def args(self) -> tuple[Any, ...]:
        """:class:`ClientWorker`'s positional arguments."""
        return (self.x, self.y, self.order, self.offsets, dict(self.model_spec), self.local_work, self.seed)


class Executor(Protocol):
    """Runs a round's chunks. ``size``: its number of workers (the default number of chunks per round);
    ``failures``: worker failures survived so far (their chunks were re-run)."""

    size: int
    failures: int

    def run(self, tasks: Sequence[ChunkTask], params: np.ndarray) -> list[ChunkResult]:
        """``worker.run(task, params)`` for each task, in task order."""
        ...

    def max_rss_kib(self) -> list[int]:
        """Peak resident memory of each worker process (KiB)."""
        ...

    def close(self) -> None: ...


#: ``factory(setup, size)`` -> an executor; ``size`` is the config's ``num_actors`` (None: the executor's choice).
ExecutorFactory = Callable[[WorkerSetup, "int | None"], Executor]


class InProcessExecutor:
    """One :class:`ClientWorker` in this process runs every chunk, one after another (on the CPU).

    ``size`` only sets the default number of chunks per round, so that a run here cuts the cohort as
    a run on ``size`` actors does and gives the same results bit for bit."""

    def __init__(self, setup: WorkerSetup, size: int | None = None) -> None:
        self.size = check_int("num_actors", 1 if size is None else size, 1)
        self.failures = 0
        self._worker = ClientWorker(*setup.args())

    def run(self, tasks: Sequence[ChunkTask], params: np.ndarray) -> list[ChunkResult]:
        return [self._worker.run(task, params) for task in tasks]

    def max_rss_kib(self) -> list[int]:
        return []  # no worker process besides this one

    def close(self) -> None:
        pass
