"""DP across workers on a real 2-process gloo group: DP-SGD for the whole group (Poisson sampling per shard,
noise added once, global expected batch size) and DP local SGD (accounting independent of the sync period).

One spawn runs every scenario; each rank saves what it saw, the assertions run in the test process against
independent references (per-example clipping by hand, Opacus' accountant, the noise variance closed form).
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import TensorDataset

from distsched.privacy import ConstantNoise, private_training

WORLD = 2
N, D = 400, 6
LR, CLIP = 0.5, 1.0
#: per-layer thresholds (Opacus' clipping="per_layer"), one per parameter tensor; sensitivity sqrt(sum C_i^2)
PER_LAYER = [0.05, 0.1, 0.2, 0.3]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 2))


def _shard(rank):
    return np.arange(rank, N, WORLD)


def _scenario_group_exact(rank, clip=CLIP):
    """sigma = 0: the update must be the clipped per-example sum of the union batch over the global B."""
    from distsched.privacy import PoissonBatches

    x, y = _data()
    q = 0.1
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=q,
                      expected_batch_size=q * N / WORLD, max_grad_norm=clip, delta=1e-5, noise=ConstantNoise(0.0),
                      mode="group", noise_seed=rank)
    sampler = PoissonBatches(_shard(rank), q, seed=5, rank=rank)
    batches, params = [], []
    for t in range(3):
        idx = sampler.draw(t)
        batches.append(idx)
        pt.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(pt.model(x[idx]), y[idx]).backward()
        pt.optimizer.step()
        pt.after_step()
        params.append([p.detach().clone() for p in pt.model.parameters()])
    return {"batches": batches, "params": params, "history": pt.accountant.history}


def _scenario_group_noise(rank, clip=CLIP):
    """Zero gradients: the parameter change is the noise alone, lr * N(0, sigma^2 C^2) / B_global, added once."""
    x, _ = _data()
    q, sigma, steps = 0.1, 2.0, 40
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=q,
                      expected_batch_size=q * N / WORLD, max_grad_norm=clip, delta=1e-5, noise=sigma,
                      mode="group", noise_seed=100 + rank)
    deltas = []
    for _ in range(steps):
        before = torch.cat([p.detach().flatten() for p in pt.model.parameters()])
        pt.optimizer.zero_grad(set_to_none=True)
        (0.0 * pt.model(x[:20]).sum()).backward()
        pt.optimizer.step()
        pt.after_step()
        deltas.append(torch.cat([p.detach().flatten() for p in pt.model.parameters()]) - before)
    return {"deltas": torch.stack(deltas), "history": pt.accountant.history, "epsilon": pt.epsilon}


def _scenario_group_coupling(rank):
    """LR coupling in group mode: the noise std it assumes must be single mode's, sigma C / (q N)."""
    from distsched.privacy import PoissonBatches

    x, y = _data()
    q, sigma = 0.1, 2.0
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=q,
                          expected_batch_size=q * N / WORLD, max_grad_norm=CLIP, delta=1e-5, noise=sigma,
                          mode="group", noise_seed=rank, lr_coupling=True)
    sampler = PoissonBatches(_shard(rank), q, seed=9, rank=rank)
    for t in range(8):
        idx = sampler.draw(t)
        pt.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(pt.model(x[idx]), y[idx]).backward()
        pt.optimizer.step()
        pt.after_step()
    return {"noise_std": pt.lr_controller.last_noise_std, "factor": pt.lr_factor}


def _scenario_local(rank, period):
    """DP local SGD: each rank private on its shard, models averaged every ``period`` steps."""
    from distsched.privacy import PoissonBatches

    x, y = _data()
    b_local, steps = 10, 12
    shard = _shard(rank)
    q_local = b_local / len(shard)
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=q_local,
                      expected_batch_size=b_local, max_grad_norm=CLIP, delta=1e-5, noise=1.1, mode="local",
                      noise_seed=7 + rank)
    sampler = PoissonBatches(shard, q_local, seed=9, rank=rank)
    for t in range(steps):
        idx = sampler.draw(t)
        pt.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(pt.model(x[idx]), y[idx]).backward()
        pt.optimizer.step()
        pt.after_step()
        if (t + 1) % period == 0:
            with torch.no_grad():
                for p in pt.model.parameters():
                    dist.all_reduce(p.data)
                    p.data /= WORLD
    return {"history": pt.accountant.history, "epsilon": pt.epsilon, "q_local": q_local,
            "params": [p.detach().clone() for p in pt.model.parameters()]}


def _scenario_guard(rank, mode):
    """Train until the guard refuses; then a fresh wrapper restored from the state refuses at once."""
    from distsched.privacy import PoissonBatches

    x, y = _data()
    q = 0.1
    kwargs = dict(sample_rate=q, expected_batch_size=q * N / WORLD, max_grad_norm=CLIP, delta=1e-5, noise=2.0,
                  target_epsilon=1.0, mode=mode, noise_seed=rank)
    model = _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), **kwargs)
    sampler = PoissonBatches(_shard(rank), q, seed=2, rank=rank)
    taken = 0
    while pt.allows_next_step():
        idx = sampler.draw(taken)
        pt.optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(pt.model(x[idx]), y[idx]).backward()
        pt.optimizer.step()
        pt.after_step()
        taken += 1
    state = pt.state_dict()
    model2 = _model()
    pt2 = private_training(model2, torch.optim.SGD(model2.parameters(), lr=LR), **kwargs)
    fresh_allows = pt2.allows_next_step()
    pt2.load_state_dict(state)
    return {"taken": taken, "epsilon": pt.epsilon, "fresh_allows": fresh_allows,
            "restored_allows": pt2.allows_next_step(), "restored_steps": pt2.accountant.steps}


#: an empty first draw on rank 0 and not on rank 1 (group and local mode, several clipping modes): q N / W = 1
Q_EMPTY = 1.0 / (N // WORLD)
EMPTY_CASES = [("group", "hooks", CLIP), ("group", "functorch", CLIP), ("group", "ew", CLIP),
               ("group", "hooks", PER_LAYER), ("local", "hooks", CLIP)]


def _empty_draw_seed() -> int:
    """The first seed whose Poisson draw 0 is empty on rank 0 and not on rank 1 (a pure function of the seed)."""
    from distsched.privacy import PoissonBatches

    return next(s for s in range(10_000) if not PoissonBatches(_shard(0), Q_EMPTY, seed=s, rank=0).draw(0)
                and PoissonBatches(_shard(1), Q_EMPTY, seed=s, rank=1).draw(0))


def _scenario_empty_draw(rank, mode, clipping, clip):
    """One step from the Poisson loader through the loop's train_step; rank 0's batch is empty (0 examples)."""
    from distsched.data import token_cross_entropy
    from distsched.privacy import PerExampleLoss, PoissonBatches, poisson_loader, run_epsilon
    from distsched.train.loop import train_step

    x, y = _data()
    seed, model = _empty_draw_seed(), _model()
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=Q_EMPTY,
                          expected_batch_size=Q_EMPTY * N / WORLD, max_grad_norm=clip, delta=1e-5, noise=1.3,
                          mode=mode, target_epsilon=50.0, noise_seed=100 + rank, clipping=clipping)
    before = [p.detach().clone() for p in pt.model.parameters()]
    batch = next(iter(poisson_loader(TensorDataset(x, y), _shard(rank), Q_EMPTY, seed=seed, rank=rank)))
    assert pt.allows_next_step()  # a collective (MIN over the ranks)
    loss = train_step(pt.model, pt.optimizer, batch, torch.device("cpu"),
                      pt.loss_fn(PerExampleLoss(token_cross_entropy)), empty_step=pt.empty_step)
    pt.after_step()
    return {"draw": PoissonBatches(_shard(rank), Q_EMPTY, seed=seed, rank=rank).draw(0), "loss": loss,
            "before": before, "after": [p.detach().clone() for p in pt.model.parameters()],
            "history": pt.accountant.history, "epsilon": run_epsilon(pt)}


def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        res = {
            "group_exact": _scenario_group_exact(rank),
            "group_noise": _scenario_group_noise(rank),
            "local_h1": _scenario_local(rank, 1),
            "local_h4": _scenario_local(rank, 4),
            "guard_group": _scenario_guard(rank, "group"),
            "group_coupling": _scenario_group_coupling(rank),
            "group_per_layer": _scenario_group_exact(rank, PER_LAYER),
            "group_noise_per_layer": _scenario_group_noise(rank, PER_LAYER),
            "empty_draw": [_scenario_empty_draw(rank, *case) for case in EMPTY_CASES],
        }
        torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("privacy_gloo")
    mp.spawn(_worker, args=(_free_port(), str(outdir)), nprocs=WORLD, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _opacus_eps(history, delta=1e-5):
    acc = RDPAccountant()
    acc.history = [tuple(s) for s in history]
    return acc.get_epsilon(delta=delta)


def _clipped(grads, clip):
    """One example's gradients clipped by hand: flat (``clip`` a float: the whole gradient to ``clip``) or
    per layer (``clip`` a list: tensor ``i`` to ``clip[i]``), Opacus' factor ``min(1, C / (norm + 1e-6))``."""
    if isinstance(clip, float):
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        return [min(1.0, clip / (float(norm) + 1e-6)) * g for g in grads]
    return [min(1.0, c / (float(g.norm()) + 1e-6)) * g for g, c in zip(grads, clip)]


@pytest.mark.parametrize(("key", "clip"), [("group_exact", CLIP), ("group_per_layer", PER_LAYER)])
def test_group_dp_sgd_is_the_clipped_sum_over_the_global_expected_batch(runs, key, clip):
    x, y = _data()
    model = _model()
    q = 0.1
    b_global = q * N
    for t in range(3):
        union = runs[0][key]["batches"][t] + runs[1][key]["batches"][t]
        total = [torch.zeros_like(p) for p in model.parameters()]
        for i in union:  # per-example gradients, clipped by hand
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
            grads = [p.grad.detach().clone() for p in model.parameters()]
            total = [a + g for a, g in zip(total, _clipped(grads, clip))]
        with torch.no_grad():
            for p, g in zip(model.parameters(), total):
                p -= LR * g / b_global
        for rank in range(WORLD):
            for p_ref, p_rank in zip(model.parameters(), runs[rank][key]["params"][t]):
                torch.testing.assert_close(p_rank, p_ref.detach(), rtol=1e-5, atol=1e-6)
    assert runs[0][key]["history"] == [(0.0, 0.1, 3)]


@pytest.mark.parametrize(("key", "sensitivity"), [("group_noise", CLIP),
                                                  ("group_noise_per_layer", float(np.linalg.norm(PER_LAYER)))])
def test_group_noise_is_added_once_for_the_whole_group(runs, key, sensitivity):
    d0, d1 = runs[0][key]["deltas"], runs[1][key]["deltas"]
    torch.testing.assert_close(d0, d1, rtol=0, atol=0)  # all ranks apply the same noisy update
    sigma, b_global = 2.0, 0.1 * N
    expected_var = (LR * sigma * sensitivity / b_global) ** 2  # once; twice would double it
    ratio = float(d0.double().pow(2).mean()) / expected_var
    assert 0.88 < ratio < 1.12, ratio
    assert runs[0][key]["history"] == [(2.0, 0.1, 40)]
    assert runs[0][key]["epsilon"] == pytest.approx(_opacus_eps([(2.0, 0.1, 40)]), rel=1e-12)


def test_local_dp_sgd_accounting_is_independent_of_the_sync_period(runs):
    for rank in range(WORLD):
        h1, h4 = runs[rank]["local_h1"], runs[rank]["local_h4"]
        q_local = 10 / len(_shard(rank))
        assert h1["q_local"] == q_local
        assert h1["history"] == h4["history"] == [(1.1, q_local, 12)]
        assert h1["epsilon"] == h4["epsilon"] == pytest.approx(_opacus_eps([(1.1, q_local, 12)]), rel=1e-12)
    # after an averaging step the replicas agree (H=4, 12 steps: the last step synced)
    for a, b in zip(runs[0]["local_h4"]["params"], runs[1]["local_h4"]["params"]):
        torch.testing.assert_close(a, b)


def test_group_guard_stops_all_ranks_at_the_same_step_and_resume_cannot_reset(runs):
    g0, g1 = runs[0]["guard_group"], runs[1]["guard_group"]
    assert g0["taken"] == g1["taken"] > 0
    n = g0["taken"]
    assert _opacus_eps([(2.0, 0.1, n)]) <= 1.0 < _opacus_eps([(2.0, 0.1, n + 1)])
    assert g0["fresh_allows"] and g1["fresh_allows"]
    assert not g0["restored_allows"] and not g1["restored_allows"]
    assert g0["restored_steps"] == n


def test_group_lr_coupling_uses_the_global_noise_std_of_single_mode(runs):
    """Opacus' DistributedDPOptimizer divides by W * (qN / W) = qN, as one process with the union batch does;
    the old estimate assumed sigma C / (qN / W), subtracted W^2 times the noise and gave G^2 = 0, factor 0."""
    import torch.optim

    from distsched.privacy import private_training as single

    model = _model()
    ref = single(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=0.1, expected_batch_size=0.1 * N,
                 max_grad_norm=CLIP, delta=1e-5, noise=2.0, lr_coupling=True, noise_seed=0)
    x, y = _data()
    nn.functional.cross_entropy(ref.model(x[:40]), y[:40]).backward()
    ref.optimizer.step()
    ref.after_step()
    for rank in range(WORLD):
        got = runs[rank]["group_coupling"]
        assert got["noise_std"] == pytest.approx(ref.lr_controller.last_noise_std, rel=1e-12)
        assert got["noise_std"] == pytest.approx(2.0 * CLIP / (0.1 * N), rel=1e-12)
        assert got["factor"] > 0.0
    assert runs[0]["group_coupling"]["factor"] == runs[1]["group_coupling"]["factor"]


@pytest.mark.parametrize("k", range(len(EMPTY_CASES)), ids=[f"{m}-{c}-{'layer' if isinstance(t, list) else 'flat'}"
                                                          for m, c, t in EMPTY_CASES])
def test_an_empty_draw_on_one_rank_is_a_noise_only_step_and_every_rank_joins(runs, k):
    """Rank 0's first Poisson draw is empty: it takes the noise-only step without a forward pass and still joins
    the gradient all-reduce (group) or steps alone (local); both charge (sigma, q) for the step."""
    mode, _, clip = EMPTY_CASES[k]
    r0, r1 = runs[0]["empty_draw"][k], runs[1]["empty_draw"][k]
    assert r0["draw"] == [] and r1["draw"] and np.isnan(r0["loss"]) and np.isfinite(r1["loss"])
    sensitivity = float(np.linalg.norm(clip))
    gen = torch.Generator().manual_seed(100)  # rank 0's noise generator (reproducible mode)
    noise0 = [torch.normal(0.0, 1.3 * sensitivity, size=p.shape, generator=gen) for p in r0["before"]]
    if mode == "group":  # one update for the group: (rank 0's noise + the clipped sum of rank 1's draw) / (q N)
        x, y = _data()
        model = _model()
        clipped = [torch.zeros_like(p) for p in model.parameters()]
        for i in r1["draw"]:
            model.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
            grads = [p.grad.detach().clone() for p in model.parameters()]
            clipped = [a + g for a, g in zip(clipped, _clipped(grads, clip))]
        want = [b - LR * (n + c) / (Q_EMPTY * N) for b, n, c in zip(r0["before"], noise0, clipped)]
        for got in (r0["after"], r1["after"]):
            for p, w in zip(got, want):
                torch.testing.assert_close(p, w, rtol=1e-5, atol=1e-6)
    else:  # local: rank 0's own noise-only step over its expected batch q N_k
        for p, b, n in zip(r0["after"], r0["before"], noise0):
            torch.testing.assert_close(p, b - LR * n / (Q_EMPTY * N / WORLD), rtol=1e-5, atol=1e-6)
    assert r0["history"] == r1["history"] == [(1.3, Q_EMPTY, 1)]
    assert r0["epsilon"] == r1["epsilon"] == pytest.approx(_opacus_eps([(1.3, Q_EMPTY, 1)]), rel=1e-12)
