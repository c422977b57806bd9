"""Empty Poisson draws (probability about ``e^{-B}`` per step for an expected batch ``B``): the loader hands a
batch of 0 examples with the data's shapes and dtypes even when it is the first draw of a process, the DP
step on it is the noise alone and is charged like any step (every clipping mode), and the training loop
records a finite loss weighted by examples. Each test forces the empty draw deterministically: it picks the
first seed whose draw 0 is empty (a pure function of (seed, rank, step)) and asserts that it is. Group and
local mode over 2 gloo workers, one with an empty draw: ``test_privacy_distributed.py`` (in its one spawn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from distsched.data import token_cross_entropy
from distsched.privacy import PerExampleLoss, PoissonBatches, poisson_loader, private_training
from distsched.train.loop import train_step

N, D = 40, 6
LR, SIGMA, CLIP, DELTA = 0.5, 1.3, 1.0, 1e-5


def _first_empty_seed(indices, q: float, rank: int = 0) -> int:
    """The first seed whose first Poisson draw over ``indices`` at rate ``q`` is empty."""
    seed = next(s for s in range(10_000) if not PoissonBatches(indices, q, seed=s, rank=rank).draw(0))
    assert PoissonBatches(indices, q, seed=seed, rank=rank).draw(0) == []
    return seed


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 2))


def test_first_empty_draw_is_a_batch_of_the_data_shapes():
    data, q = _data(), 0.02
    seed = _first_empty_seed(np.arange(N), q)
    batch = next(iter(poisson_loader(data, np.arange(N), q, seed=seed)))
    x, y = batch
    assert (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype) == ((0, D), torch.float32, (0,), torch.int64)
    # a dict-structured data set (own collate) and token windows keep their structure too
    windows = [{"ids": torch.arange(16) % 7, "mask": torch.ones(16, dtype=torch.bool)} for _ in range(N)]
    empty = next(iter(poisson_loader(windows, np.arange(N), q, seed=seed)))
    assert {k: (tuple(v.shape), v.dtype) for k, v in empty.items()} == {
        "ids": ((0, 16), torch.int64), "mask": ((0, 16), torch.bool)}


CASES = [("hooks", False), ("functorch", False), ("ew", False), ("ghost", False),
         ("hooks", True), ("functorch", True), ("ew", True)]


def _private(clipping: str, per_layer: bool, q: float):
    model = _model()
    clip = [0.4, 0.3, 0.2, 0.1] if per_layer else CLIP  # per layer: the noise std is sigma sqrt(sum C_i^2)
    pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=q,
                          expected_batch_size=q * N, max_grad_norm=clip, delta=DELTA, noise=SIGMA, noise_seed=11,
                          clipping=clipping)
    sensitivity = math.sqrt(sum(c * c for c in clip)) if per_layer else CLIP
    return pt, pt.loss_fn(PerExampleLoss(token_cross_entropy)), sensitivity


@pytest.mark.parametrize(("clipping", "per_layer"), CASES)
def test_step_on_an_empty_first_draw_is_the_noise_alone_and_is_charged(clipping, per_layer):
    data, q = _data(), 0.02
    seed = _first_empty_seed(np.arange(N), q)
    pt, loss_fn, sensitivity = _private(clipping, per_layer, q)
    batch = next(iter(poisson_loader(data, np.arange(N), q, seed=seed)))
    before = [p.detach().clone() for p in pt.model.parameters()]
    assert pt.allows_next_step()
    loss = train_step(pt.model, pt.optimizer, batch, torch.device("cpu"), loss_fn, empty_step=pt.empty_step)
    pt.after_step()
    assert math.isnan(loss)  # a mean over no example; the loop weighs it by its 0 examples
    # the update is -lr * N(0, sigma^2 C^2) / (q N): the noise the optimizer's seeded generator draws, in order
    gen = torch.Generator().manual_seed(11)
    for p, b in zip(pt.model.parameters(), before):
        noise = torch.normal(0.0, SIGMA * sensitivity, size=p.shape, generator=gen)
        torch.testing.assert_close(p.detach(), b - LR * noise / (q * N), rtol=1e-6, atol=1e-7)
    # charged exactly like a step on a non-empty draw
    ref, ref_loss, _ = _private(clipping, per_layer, q)
    full = [t[:5] for t in data.tensors]
    assert math.isfinite(train_step(ref.model, ref.optimizer, full, torch.device("cpu"), ref_loss,
                                    empty_step=ref.empty_step))
    assert pt.accountant.history == ref.accountant.history == [(SIGMA, q, 1)]
    assert pt.epsilon == ref.epsilon > 0


#: a run whose Poisson draws have sizes [0, 1, 0, 0, 2, 0] (asserted below): seed 49 of the digits run (one
#: example expected per step), the first seed from 0 up with an empty first draw, then one example, then an
#: empty record window of 2 steps.
LOOP_SEED, LOOP_SIZES = 49, [0, 1, 0, 0, 2, 0]


def _loop_mapping(seed: int) -> dict:
    return {"name": "dp-empty", "seed": seed, "workers": 1, "steps": 6, "batch_size": 1, "log_every": 2,
            "model": {"name": "mlp", "hidden": [8]}, "data": {"name": "digits"}, "optimizer": {"name": "sgd"},
            "schedule": {"name": "constant", "lr": 0.1}, "sync": {"name": "fixed", "h": 1},
            "checkpoint": {"every": 6, "keep": 1},
            "privacy": {"noise_multiplier": SIGMA, "delta": DELTA, "max_grad_norm": CLIP, "reproducible": True}}


def test_training_loop_takes_noise_only_steps_and_records_finite_losses(tmp_path):
    from opacus.accountants import RDPAccountant

    from distsched.report import read_metrics
    from distsched.train import LocalSession, config_from_mapping, prepare_run, train_worker
    from distsched.train.checkpoint import latest_checkpoint, load_rank_state

    cfg = config_from_mapping(_loop_mapping(LOOP_SEED))
    shard = cfg.data.shards(cfg.data.load(LOOP_SEED).targets, 1, 1, LOOP_SEED)[0]
    q = 1 / len(shard)  # batch_size * workers / N
    draws = PoissonBatches(shard, q, seed=LOOP_SEED)  # the run's sampler (reproducible: seeded by the config)
    assert [len(draws.draw(t)) for t in range(6)] == LOOP_SIZES
    folder, tc = prepare_run(cfg, run_dir=tmp_path / "run")
    summary = train_worker(tc, folder.root, LocalSession(folder.checkpoints, rank=0, world_size=1))
    assert summary["steps_done"] == 6 and not summary["stopped_by_budget"]
    # every step is charged, the empty ones included: 6 steps at (sigma, q)
    state = load_rank_state(latest_checkpoint(folder.checkpoints), 0)
    assert state["privacy"]["accountant"]["history"] == [[SIGMA, q, 6]]
    acc = RDPAccountant()
    acc.history = [(SIGMA, q, 6)]
    assert summary["epsilon"] == pytest.approx(acc.get_epsilon(delta=DELTA), rel=1e-12)
    # records: steps 1-2 hold one example (finite), steps 3-4 none (no loss, not nan or 0), steps 5-6 two
    losses = [r["loss"] for r in read_metrics(folder.metrics_path) if "step" in r]
    assert losses[1] is None and all(isinstance(v, float) and math.isfinite(v) for v in (losses[0], losses[2]))
    assert summary["final_loss"] == losses[2]



def test_make_private_loop_takes_an_empty_first_draw_with_empty_step():
    """One's own loop with ExpandedWeights clipping (which refuses a batch of 0): the README's recipe."""
    from torch.utils.data import DataLoader

    from distsched.privacy import make_private

    data, q = _data(), 1 / N  # batch_size 1: q = 1 / N
    seed = _first_empty_seed(np.arange(N), q)  # make_private's Poisson batches come from noise_seed
    model = _model()
    dp_model, opt, loader = make_private(model, torch.optim.SGD(model.parameters(), lr=LR),
                                         DataLoader(data, batch_size=1), max_grad_norm=CLIP, delta=DELTA,
                                         noise_multiplier=SIGMA, noise_seed=seed, clipping="ew")
    before = [p.detach().clone() for p in dp_model.parameters()]
    x, y = next(iter(loader))
    assert x.shape == (0, D) and y.shape == (0,)
    opt.privacy.empty_step()
    gen = torch.Generator().manual_seed(seed)
    for p, b in zip(dp_model.parameters(), before):
        torch.testing.assert_close(p.detach(), b - LR * torch.normal(0.0, SIGMA * CLIP, size=p.shape, generator=gen),
                                   rtol=1e-6, atol=1e-7)  # expected batch q N = 1
    assert opt.privacy.accountant.history == [(SIGMA, q, 1)] and opt.privacy.noise.step_count == 1


@pytest.mark.parametrize(("clipping", "per_layer"), CASES)
def test_an_empty_step_leaves_nothing_behind_for_the_next_step(clipping, per_layer):
    """With (almost) no noise, a step on a batch after an empty draw is the step on that batch alone: no stale
    per-example gradients (ExpandedWeights adds to an existing ``grad_sample``) or clipped sums carry over."""
    x, y = _data().tensors[0][:10], _data().tensors[1][:10]
    params = []
    for first_empty in (True, False):
        model = _model()
        clip = [0.4, 0.3, 0.2, 0.1] if per_layer else CLIP
        pt = private_training(model, torch.optim.SGD(model.parameters(), lr=LR), sample_rate=0.25,
                              expected_batch_size=10.0, max_grad_norm=clip, delta=DELTA, noise=1e-9, noise_seed=0,
                              clipping=clipping)
        loss_fn = pt.loss_fn(PerExampleLoss(token_cross_entropy))
        if first_empty:
            train_step(pt.model, pt.optimizer, [x[:0], y[:0]], torch.device("cpu"), loss_fn, empty_step=pt.empty_step)
            pt.after_step()
        train_step(pt.model, pt.optimizer, [x, y], torch.device("cpu"), loss_fn, empty_step=pt.empty_step)
        pt.after_step()
        params.append([p.detach().clone() for p in pt.model.parameters()])
    assert pt.accountant.history == [(1e-9, 0.25, 1)]
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
