"""Empty Poisson draws: a batch with no example that keeps the data's structure.

Poisson sampling at rate ``q`` draws no example with probability ``(1 - q)^N`` (about ``e^{-B}`` for an
expected batch ``B``). The draw is part of the mechanism: the step still runs, releases the noise alone and
is charged to the accountant. The loader must then hand over a batch of 0 examples with the shapes and
dtypes of a real one. Opacus' ``wrap_collate_with_empty`` learns that structure from the first non-empty
batch, so an empty FIRST draw (of a process, or after a resume) comes out as ``[]``; :class:`EmptyBatchCollate`
knows it from the start, from one example of the data set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate


def empty_like_batch(batch: Any) -> Any:
    """``batch`` with 0 examples: each tensor ``(n, *shape)`` becomes an empty ``(0, *shape)`` of the same dtype
    and device, inside the same dicts, lists and tuples. Any other leaf raises ``TypeError`` (an empty batch
    must not carry data)."""
    if torch.is_tensor(batch):
        if batch.dim() == 0:
            raise TypeError("empty batch: a collated batch has a batch dimension; got a 0-d tensor")
        return batch.new_empty((0, *batch.shape[1:]))
    if isinstance(batch, Mapping):
        return {k: empty_like_batch(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(empty_like_batch(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(empty_like_batch(v) for v in batch)
    raise TypeError(f"empty batch: cannot make an empty {type(batch).__name__}; a collated batch may hold "
                    "tensors in dicts, lists and tuples only")


class EmptyBatchCollate:
    """``collate_fn`` for Poisson batches: a non-empty draw is ``collate_fn(items)``; an empty one, the batch
    of ``collate_fn([example])`` with 0 examples (:func:`empty_like_batch`), whether or not a non-empty draw came
    before. The example fixes the structure only (its values are not kept)."""

    def __init__(self, example: Any, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate_fn = collate_fn or default_collate
        self.empty = empty_like_batch(self.collate_fn([example]))

    def __call__(self, items: list[Any]) -> Any:
        if len(items) > 0:
            return self.collate_fn(items)
        return empty_like_batch(self.empty)  # fresh tensors each time (their shapes, no storage)

    @classmethod
    def for_dataset(cls, dataset: Dataset, indices: Sequence[int] | np.ndarray,
                    collate_fn: Callable[[list[Any]], Any] | None = None) -> EmptyBatchCollate:
        """The collate of Poisson batches over ``indices`` of ``dataset`` (the structure of ``dataset[indices[0]]``)."""
        if len(indices) == 0:
            raise ValueError("indices must not be empty")
        return cls(dataset[int(indices[0])], collate_fn)

