"""A resumable batch sampler over one worker's shard of the training set; the size of a collated batch."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from distsched._checks import check_int


class ShardBatches:
    """Endless batches of indices from one shard, reshuffled every epoch, resumable.

    Epoch ``e`` visits ``shard[perm_e]`` with ``perm_e = randperm(n, seed=hash(seed, rank, e))`` in
    ``n // batch_size`` full batches. The whole state is ``(epoch, batch)``: a run restored from
    :meth:`state_dict` draws the same batches as one that never stopped.
    """

    def __init__(self, shard: np.ndarray, batch_size: int, seed: int, rank: int) -> None:
        self.shard = torch.as_tensor(np.asarray(shard), dtype=torch.int64)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if len(self.shard) < self.batch_size:
            raise ValueError(f"batch_size must be <= the shard size {len(self.shard)}, got {batch_size}")
        self.seed, self.rank = int(seed), int(rank)
        self.epoch = 0
        self.batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.shard) // self.batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 10_007 + epoch)
        return self.shard[torch.randperm(len(self.shard), generator=g)]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            order = self._order(self.epoch)
            while self.batch < self.batches_per_epoch:
                start = self.batch * self.batch_size
                self.batch += 1
                yield order[start : start + self.batch_size].tolist()
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def examples_in(batch: Any) -> int:
    """The number of examples of a collated batch: the length of its first tensor's batch dimension."""
    if torch.is_tensor(batch):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)) and batch:
        return examples_in(batch[0])
    raise TypeError(f"a collated batch holds tensors; got {type(batch).__name__}")
