"""Local training of one client, and the schedule-aware amount of local work.

A client's randomness (batch order) comes from a generator seeded by ``(seed, round, client)``,
so its update does not depend on which actor trains it or in which order.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from distsched._checks import check_choice, check_int, check_non_negative
from distsched.data import evaluate_tensors, token_cross_entropy
from distsched.sync import QSR


def client_seed(seed: int, round_: int, client: int) -> int:
    """A 63-bit seed for ``(seed, round, client)`` from NumPy's ``SeedSequence`` hashing."""
    state = np.random.SeedSequence([seed, round_, client, 7]).generate_state(2, np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


@dataclasses.dataclass(frozen=True)
class LocalWork:
    """Local work per round, in ``unit`` (``"epochs"`` or ``"steps"``).

    ``rule="constant"``: ``H = base``. ``rule="qsr"``: ``H = min(max_work, max(base, floor((alpha / lr)^2)))``,
    more local work as the client LR decays (the quadratic synchronization rule of Gu et al. 2024,
    "A Quadratic Synchronization Rule for Distributed Deep Learning", applied to local epochs/steps).
    """

    unit: str = "epochs"
    base: int = 1
    rule: str = "constant"
    alpha: float = 0.0
    max_work: int = 100

    def __post_init__(self) -> None:
        check_choice("client.local_unit", self.unit, ("epochs", "steps"))
        check_int("client.local_work", self.base, 1)
        check_choice("client.local_work_rule", self.rule, ("constant", "qsr"))
        check_non_negative("client.qsr_alpha", self.alpha)
        check_int("client.max_local_work", self.max_work, self.base)

    def amount(self, lr: float) -> int:
        """``base`` (constant), or :class:`distsched.sync.QSR`'s period for ``lr`` with ``h_base = base``,
        capped at ``max_work`` (``alpha = 0``: ``base``)."""
        if self.rule == "constant" or self.alpha == 0.0:
            return self.base
        return int(min(self.max_work, QSR(h_base=self.base, alpha=self.alpha).period_from_lr(lr)))

    def steps(self, work: int, num_samples: int, batch_size: int) -> int:
        """Optimizer steps for ``work`` units on ``num_samples`` samples: ``work * ceil(n / B)`` for epochs."""
        if self.unit == "steps":
            return work
        return work * max(1, math.ceil(num_samples / batch_size))


def batch_order(num_samples: int, steps: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Index batches for ``steps`` steps: a fresh permutation per epoch, the last batch of an epoch
    may be short (``torch.utils.data.DataLoader(shuffle=True)`` semantics)."""
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        perm = torch.randperm(num_samples, generator=generator)
        batches.extend(perm.split(batch_size))
    return batches[:steps]


def train_client(
    model: nn.Module,
    params: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int,
    batch_size: int,
    generator: torch.Generator,
    prox_mu: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """Plain SGD for ``steps`` mini-batch steps from the global model ``params`` (flat).

    Loss ``CE(model(x_b), y_b) + prox_mu / 2 * ||w - params||^2`` (FedProx when ``prox_mu > 0``).
    Returns the update ``delta = w_final - params`` (flat, float32) and the mean training loss.
    """
    plist = [p for p in model.parameters()]
    # vector_to_parameters makes the parameters views of its input: give it a copy.
    torch.nn.utils.vector_to_parameters(params.clone(), plist)
    anchors = [p.detach().clone() for p in plist] if prox_mu > 0.0 else None
    total = 0.0
    for idx in batch_order(len(y), steps, batch_size, generator):
        loss = token_cross_entropy(model(x[idx]), y[idx])
        grads = torch.autograd.grad(loss, plist)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(plist, grads)):
                if anchors is not None:
                    g = g + prox_mu * (p - anchors[i])
                p.sub_(lr * g)
        total += float(loss.detach())
    with torch.no_grad():
        delta = torch.nn.utils.parameters_to_vector(plist) - params
    return delta, total / max(steps, 1)


@torch.no_grad()
def evaluate(model: nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy of the global model ``params``
    (:func:`distsched.data.evaluate_tensors`)."""
    torch.nn.utils.vector_to_parameters(params, model.parameters())
    return evaluate_tensors(model, x, y)
