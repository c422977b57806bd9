"""The simulation worker: trains a chunk of the cohort in-process and returns one weighted sum.

One worker per executor slot (a Ray actor, or this process) keeps the training data and the client
index (CSR: ``order``, ``offsets``; client ``k`` owns ``order[offsets[k]:offsets[k+1]]``) resident,
trains its clients one after another and sums ``w_k * delta_k`` in float64 in the chunk's client order
(the design of pfl-research: one result per chunk, not one message per client).
"""

from __future__ import annotations

import dataclasses
import resource
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from distsched.data import Partition, build_model
from distsched.federated.client import LocalWork, client_seed, train_client


@dataclasses.dataclass
class ChunkResult:
    """Sum of weighted (clipped) updates of a chunk, with per-client statistics.

    ``update_sum = sum_k w_k * clip(delta_k)`` (float64), ``weight_sum = sum_k w_k``;
    ``unclipped = #{k : ||delta_k|| <= C}`` (the count adaptive clipping estimates).
    """

    update_sum: np.ndarray
    weight_sum: float
    clients: np.ndarray
    losses: np.ndarray
    norms: np.ndarray
    steps: np.ndarray
    unclipped: int
    max_rss_kib: int
    #: ``(n, d)`` float64 (clipped) update of every client of the chunk, in chunk order, when the task
    #: asked for them (``ChunkTask.per_client``: robust strategies); else None
    updates: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """What a worker needs to train one chunk in one round."""

    round: int
    clients: np.ndarray
    weight_scale: np.ndarray
    lr: float
    work: int
    batch_size: int
    prox_mu: float = 0.0
    clip_norm: float | None = None
    weighting: str = "samples"
    #: also return every client's (clipped) update, not only the weighted sum (robust strategies, FedBuff)
    per_client: bool = False
    #: the round each client's seed is drawn for (FedBuff: its launch wave); None: ``round`` for all
    rounds: np.ndarray | None = None


class ClientWorker:
    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        order: np.ndarray,
        offsets: np.ndarray,
        model_spec: Mapping[str, Any],
        local_work: LocalWork,
        seed: int,
        num_threads: int = 1,
        device: str = "cpu",
    ) -> None:
        torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.x = shared_tensor(x).to(self.device)
        self.y = shared_tensor(y).to(self.device)
        self.order = np.asarray(order)
        self.offsets = np.asarray(offsets)
        self.model = build_model(**dict(model_spec)).to(self.device)
        self.local_work = local_work
        self.seed = seed

    def client_size(self, client: int) -> int:
        return int(self.offsets[client + 1] - self.offsets[client])

    def run(self, task: ChunkTask, params: np.ndarray) -> ChunkResult:
        g_params = torch.as_tensor(np.array(params, dtype=np.float32, copy=True)).to(self.device)
        acc = np.zeros(g_params.numel(), dtype=np.float64)
        weight_sum, unclipped = 0.0, 0
        n = len(task.clients)
        losses, norms, steps_out = np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
        gen = torch.Generator()
        rows = np.zeros((n, g_params.numel()), dtype=np.float64) if task.per_client else None
        for i, (client, scale) in enumerate(zip(task.clients.tolist(), task.weight_scale.tolist())):
            idx = torch.as_tensor(self.order[self.offsets[client] : self.offsets[client + 1]])
            gen.manual_seed(client_seed(self.seed, task.round if task.rounds is None else int(task.rounds[i]), client))
            steps = self.local_work.steps(task.work, len(idx), task.batch_size)
            delta, loss = train_client(
                self.model,
                g_params,
                self.x[idx],
                self.y[idx],
                lr=task.lr,
                steps=steps,
                batch_size=task.batch_size,
                generator=gen,
                prox_mu=task.prox_mu,
            )
            delta64 = delta.double().cpu().numpy()
            norm = float(np.linalg.norm(delta64))
            if task.clip_norm is not None:
                unclipped += int(norm <= task.clip_norm)
                delta64 = delta64 * min(1.0, task.clip_norm / max(norm, 1e-300))
            weight = (len(idx) if task.weighting == "samples" else 1.0) * scale
            acc += weight * delta64
            if rows is not None:
                rows[i] = delta64
            weight_sum += weight
            losses[i], norms[i], steps_out[i] = loss, norm, steps
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ChunkResult(acc, weight_sum, task.clients, losses, norms, steps_out, unclipped, rss, rows)

    def ping(self) -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def shared_tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a CPU tensor on the same memory, read-only arrays included: a Ray actor's arrays are
    the object store's pages (mapped read-only, one copy per node shared by every actor), the in-process
    worker's are the driver's. Training only reads them (``x[idx]`` gathers a client's samples into a
    new tensor), so no copy per worker is needed."""
    with warnings.catch_warnings():  # torch warns that writing to a read-only array is undefined; nothing writes
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(a))


def to_csr(parts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Client index lists as ``(order, offsets)``, ``offsets[k]..offsets[k+1]`` bounding client ``k``
    (a :class:`distsched.data.Partition` is already that: no copy)."""
    if isinstance(parts, Partition):
        return parts.order, parts.offsets
    sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    order = np.concatenate(list(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    return order, offsets
