"""The actor's work in-process: one chunk's sum of weighted, clipped updates against per-client training
done directly in the test (FedProx term, DP clipping, straggler weights, sample weighting)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distsched.data import build_model, make_partition
from distsched.data import digits_flat as digits
from distsched.federated import ChunkTask, ClientWorker, LocalWork, client_seed, to_csr


@pytest.fixture(scope="module")
def worker_and_data():
    data = digits()
    parts = make_partition("dirichlet", data.y_train, 20, seed=0, alpha=0.5, min_size=3)
    order, offsets = to_csr(parts)
    spec = {"name": "mlp", "input_shape": (64,), "num_classes": 10, "hidden": (16,)}
    worker = ClientWorker(data.x_train, data.y_train, order, offsets, spec, LocalWork("epochs", 2), seed=5)
    torch.manual_seed(0)
    params = torch.nn.utils.parameters_to_vector(build_model(**spec).parameters()).detach().clone()
    return worker, data, parts, spec, params


def _direct(data, parts, spec, params, client, *, round_, lr, prox_mu):
    from distsched.federated import train_client

    idx = torch.as_tensor(parts[client])
    gen = torch.Generator().manual_seed(client_seed(5, round_, client))
    steps = 2 * math.ceil(len(idx) / 4)  # 2 local epochs, batch 4
    x, y = torch.as_tensor(data.x_train)[idx], torch.as_tensor(data.y_train)[idx]
    delta, _ = train_client(
        build_model(**spec), params, x, y, lr=lr, steps=steps, batch_size=4, generator=gen, prox_mu=prox_mu
    )
    return delta.double().numpy(), len(idx)


@pytest.mark.parametrize("dp", [False, True])
def test_chunk_sum_equals_direct_weighted_sum(worker_and_data, dp):
    worker, data, parts, spec, params = worker_and_data
    clients = np.array([1, 4, 7, 12])
    scale = np.array([1.0, 0.5, 1.0, 0.25])
    clip = 0.05 if dp else None
    task = ChunkTask(
        round=3,
        clients=clients,
        weight_scale=scale,
        lr=0.1,
        work=2,
        batch_size=4,
        prox_mu=0.3,
        clip_norm=clip,
        weighting="uniform" if dp else "samples",
    )
    result = worker.run(task, params.numpy())
    expected, weight, unclipped = np.zeros(params.numel()), 0.0, 0
    for k, s in zip(clients, scale):
        delta, n = _direct(data, parts, spec, params, int(k), round_=3, lr=0.1, prox_mu=0.3)
        norm = np.linalg.norm(delta)
        if clip is not None:
            unclipped += norm <= clip
            delta = delta * min(1.0, clip / norm)
        w = (1.0 if dp else n) * s
        expected += w * delta
        weight += w
    assert np.allclose(result.update_sum, expected, atol=1e-6, rtol=0)
    assert result.weight_sum == pytest.approx(weight)
    assert result.unclipped == unclipped
    if dp:
        assert unclipped < len(clients)  # the clip bites
        assert np.linalg.norm(result.update_sum) <= sum(scale) * clip + 1e-9
    # a chunk's result does not depend on what the worker trained before
    again = worker.run(task, params.numpy())
    assert np.array_equal(again.update_sum, result.update_sum)
