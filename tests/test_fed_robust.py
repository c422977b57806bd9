"""Byzantine-robust strategies: FedMedian, trimmed mean, Krum / multi-Krum against references written
out below, the worker's per-client path, and malicious clients (20% of the cohort sign-flipped and
scaled) against which the robust strategies hold accuracy where FedAvg does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distsched.data import build_model, digits_flat, flat_params, iid
from distsched.federated import ChunkTask, ClientSampler, ClientWorker, LocalWork, to_csr
from distsched.federated.client import evaluate
from distsched.federated.strategies import FedMedian, Krum, TrimmedMean, build_strategy

U = np.random.default_rng(0).normal(size=(7, 5))


def _ref_median(u):
    out = []
    for j in range(u.shape[1]):
        col = sorted(u[:, j])
        n = len(col)
        out.append(col[n // 2] if n % 2 else (col[n // 2 - 1] + col[n // 2]) / 2)
    return np.array(out)


def _ref_trimmed(u, beta):
    b = int(beta * len(u))
    return np.array([np.mean(sorted(u[:, j])[b : len(u) - b]) for j in range(u.shape[1])])


def _ref_krum(u, f, m):
    n = len(u)
    scores = []
    for i in range(n):
        d = sorted(sum((u[i, t] - u[j, t]) ** 2 for t in range(u.shape[1])) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    chosen = sorted(range(n), key=lambda i: (scores[i], i))[:m]
    return np.mean([u[i] for i in chosen], axis=0)


def test_median_equals_reference_odd_and_even():
    np.testing.assert_allclose(FedMedian().aggregate(U), _ref_median(U), rtol=0, atol=1e-15)
    np.testing.assert_allclose(FedMedian().aggregate(U[:6]), _ref_median(U[:6]), rtol=0, atol=1e-15)


@pytest.mark.parametrize("beta", [0.0, 0.2, 0.3, 0.49])
def test_trimmed_mean_equals_reference(beta):
    np.testing.assert_allclose(TrimmedMean(beta).aggregate(U), _ref_trimmed(U, beta), rtol=0, atol=1e-14)


@pytest.mark.parametrize("f,m", [(0, 1), (2, 1), (2, 3), (3, 7)])
def test_krum_equals_reference(f, m):
    np.testing.assert_allclose(Krum(f, m).aggregate(U), _ref_krum(U, f, m), rtol=0, atol=1e-12)


def test_krum_picks_the_honest_cluster_and_refuses_too_many_malicious():
    honest = np.random.default_rng(1).normal(0.0, 0.1, size=(8, 3)) + 1.0
    bad = np.full((2, 3), -50.0)
    out = Krum(num_malicious=2).aggregate(np.vstack([bad, honest]))
    assert np.all(np.abs(out - 1.0) < 0.5)
    with pytest.raises(ValueError, match="n - f - 2"):
        Krum(num_malicious=3).aggregate(U[:4])
    with pytest.raises(ValueError, match="beta"):
        build_strategy("trimmed_mean", beta=0.5)


def _setup(num_clients=40, seed=0):
    data = digits_flat()
    parts = iid(len(data.y_train), num_clients, np.random.default_rng(seed))
    order, offsets = to_csr(parts)
    spec = {"name": "mlp", "input_shape": data.input_shape, "num_classes": 10, "hidden": (32,), "kwargs": {}}
    worker = ClientWorker(data.x_train, data.y_train, order, offsets, spec, LocalWork("epochs", 1), seed)
    torch.manual_seed(seed)
    model = build_model(**spec)
    return data, worker, model, flat_params(model)


def test_worker_returns_per_client_updates_whose_weighted_sum_is_the_chunk_sum():
    data, worker, _, params = _setup()
    clients = np.array([3, 7, 11])
    task = ChunkTask(round=0, clients=clients, weight_scale=np.array([1.0, 0.5, 2.0]), lr=0.05, work=1,
                     batch_size=10, clip_norm=0.3, per_client=True)
    res = worker.run(task, params.numpy())
    assert res.updates.shape == (3, params.numel())
    w = np.array([worker.client_size(int(k)) for k in clients]) * np.array([1.0, 0.5, 2.0])
    np.testing.assert_allclose(w @ res.updates, res.update_sum, rtol=1e-12, atol=1e-12)
    assert np.all(np.linalg.norm(res.updates, axis=1) <= 0.3 + 1e-9)  # clipped rows
    plain = worker.run(ChunkTask(round=0, clients=clients, weight_scale=np.ones(3), lr=0.05, work=1, batch_size=10),
                       params.numpy())
    assert plain.updates is None


def _train(strategy, attack: str, rounds=20, cohort=10, seed=0, lr=0.3):
    """Rounds of the simulator's loop in-process; the first 20% of every cohort is malicious."""
    data, worker, model, params = _setup(seed=seed)
    sampler = ClientSampler(40, cohort_size=cohort, seed=seed)
    bad = cohort // 5
    for r in range(rounds):
        clients = sampler.sample(r).participants
        task = ChunkTask(round=r, clients=clients, weight_scale=np.ones(len(clients)), lr=lr, work=1,
                         batch_size=10, per_client=True)
        rows = worker.run(task, params.numpy()).updates
        if attack == "sign_flip":
            rows[:bad] = -10.0 * rows[:bad]
        elif attack == "scaled":
            rows[:bad] = 30.0 * rows[:bad]
        if strategy is None:  # FedAvg: the sample-weighted mean
            w = np.array([worker.client_size(int(k)) for k in clients], dtype=np.float64)
            delta = w @ rows / w.sum()
        else:
            delta = strategy.aggregate(rows)
        params = params + torch.as_tensor(delta, dtype=torch.float32)
    return evaluate(model, params, torch.as_tensor(data.x_test), torch.as_tensor(data.y_test))[0]


@pytest.mark.parametrize("attack", ["sign_flip", "scaled"])
def test_robust_strategies_hold_accuracy_under_20_percent_malicious_clients(attack):
    clean = _train(None, "none")  # FedAvg without attackers: the accuracy to hold
    fedavg = _train(None, attack)
    robust = {
        "median": _train(FedMedian(), attack),
        "trimmed": _train(TrimmedMean(0.2), attack),
        "krum": _train(Krum(num_malicious=2, keep=4), attack),
    }
    assert clean > 0.85, clean
    assert fedavg < 0.3, fedavg  # 10 classes: FedAvg is driven to chance level
    for name, acc in robust.items():
        assert acc > clean - 0.06, (name, acc, clean)


def test_simulation_round_hands_per_client_updates_to_a_robust_strategy():
    """The simulator's own plan_round/combine (in-process worker): per-client chunks, and the round's
    update is the strategy's aggregate of all chunks' rows in cohort order."""
    from pathlib import Path

    import yaml

    from distsched.federated import Simulation, fed_config

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "fed_digits_krum.yaml").read_text())
    cfg["chunks_per_round"] = 3
    sim = Simulation(fed_config(cfg))
    assert sim.per_client and isinstance(sim.strategy, Krum)
    tasks, _ = sim.plan_round(0)
    assert len(tasks) == 3 and all(t.per_client for t in tasks)
    order, offsets = to_csr(sim.parts)
    worker = ClientWorker(sim.data.x_train, sim.data.y_train, order, offsets, sim.model_spec, sim.local_work, 0)
    results = [worker.run(t, sim.params.numpy()) for t in tasks]
    delta, info = sim.combine(0, results)
    rows = np.concatenate([r.updates for r in results])
    assert info["trained"] == len(rows) == 20
    np.testing.assert_array_equal(delta, _ref_krum_fast(rows, 4, 10))
    cfg["dp"] = {"noise_multiplier": 1.0, "clip_norm": 1.0}
    cfg["sampling"] = {"fraction": 0.2, "poisson": True}
    with pytest.raises(ValueError, match="per-client"):
        Simulation(fed_config(cfg))


def _ref_krum_fast(u, f, m):
    d = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    scores = np.array([np.sort(np.delete(d[i], i))[: len(u) - f - 2].sum() for i in range(len(u))])
    return u[np.argsort(scores, kind="stable")[:m]].mean(axis=0)
