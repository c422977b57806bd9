"""LocalSGD on a real gloo process group (2 processes, tcp://127.0.0.1).

One spawn runs every scenario; each rank saves what it saw (tensors before and after each step) to
files, and the tests below check them against references computed here independently: the mean of
the two ranks' pre-sync tensors, closed forms for rounds and bytes, the QSR formula, a hand-written
Nesterov outer step, and torch's own ``PeriodicModelAverager``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from distsched import schedules as S
from distsched.sync import QSR, AdaComm, FixedH, LocalSGD, OuterSGD, free_port, init_process_group

WORLD = 2
SMALL_BUCKET = 200  # bytes: forces several buckets
EXAMPLE_STEPS = 60


def _model(seed: int, bn: bool = True) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(6, 16)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(16))
    layers += [torch.nn.ReLU(), torch.nn.Linear(16, 3)]
    return torch.nn.Sequential(*layers)


def _batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, list[torch.Tensor]]:
    out = {
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.detach().clone() for b in model.buffers() if b.is_floating_point()],
    }
    if opt is not None:
        out["momentum"] = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    return out


def _train_step(model, opt, gen, lr=None):
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr
    x, y = _batch(gen)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss)


def _scenario_mean(rank: int, bucket_bytes: int) -> dict:
    """Different inits per rank, FixedH(3), T=8, buffers and momentum averaged; one param's
    storage is replaced mid-run (the engine must notice and still average it)."""
    model = _model(seed=rank)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eng = LocalSGD(model, FixedH(3), optimizer=opt, average_momentum=True, total_steps=8,
                   bucket_bytes=bucket_bytes, broadcast_init=False)
    gen = torch.Generator().manual_seed(100 + rank)
    steps = []
    for t in range(8):
        if t == 4:
            first = next(model.parameters())
            first.data = first.data.clone()
        _train_step(model, opt, gen)
        pre = _state(model, opt)
        synced = eng.step(t)
        steps.append({"pre": pre, "post": _state(model, opt), "synced": synced})
    return {"steps": steps, "rounds": eng.rounds, "bytes": eng.bytes_sent, "buckets": eng.num_buckets,
            "finalize": eng.finalize(), "n_params": sum(p.numel() for p in model.parameters()),
            "n_buffers": sum(b.numel() for b in model.buffers() if b.is_floating_point())}


def _scenario_last_step(rank: int) -> dict:
    """QSR with H far beyond T: the only sync is the last step. Then FixedH(4) without total_steps:
    finalize syncs once and is idempotent."""
    model = _model(seed=rank, bn=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = S.cosine(lr=0.1, total_steps=10)
    eng = LocalSGD(model, QSR(h_base=4, alpha=1.0), sched, total_steps=10)
    gen = torch.Generator().manual_seed(200 + rank)
    qsr_syncs = [t for t in range(10) if (_train_step(model, opt, gen) or True) and eng.step(t)]
    eng2 = LocalSGD(model, FixedH(4))
    fixed_syncs = [t for t in range(10) if (_train_step(model, opt, gen) or True) and eng2.step(t)]
    fin = [eng2.finalize(), eng2.finalize()]
    return {"qsr_syncs": qsr_syncs, "qsr_final": eng.finalize(), "fixed_syncs": fixed_syncs, "finalize": fin,
            "rounds": eng2.rounds, "params": [p.detach().clone() for p in model.parameters()]}


def _scenario_qsr_cosine(rank: int) -> dict:
    """QSR on a cosine schedule over 300 steps: the sync steps the engine takes."""
    model = _model(seed=0, bn=False)
    sched = S.cosine(lr=0.1, total_steps=300)
    eng = LocalSGD(model, QSR(h_base=2, alpha=0.3, h_max=64), sched, total_steps=300)
    syncs = [t for t in range(300) if eng.step(t)]
    return {"syncs": syncs, "rounds": eng.rounds, "bytes": eng.bytes_sent,
            "n": sum(p.numel() for p in model.parameters())}


def _scenario_diloco(rank: int) -> dict:
    """Outer SGD(lr=1, momentum=0) vs plain averaging on identical runs; and Nesterov outer steps."""
    out = {}
    for name, outer in [("plain", None), ("outer_lr1", OuterSGD(lr=1.0, momentum=0.0)),
                        ("nesterov", OuterSGD(lr=0.5, momentum=0.9, nesterov=True))]:
        model = _model(seed=rank, bn=False)  # different inits: broadcast_init makes them equal
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        eng = LocalSGD(model, FixedH(2), total_steps=6, outer_optimizer=outer)
        init = [p.detach().clone() for p in model.parameters()]
        gen = torch.Generator().manual_seed(300 + rank)
        steps = []
        for t in range(6):
            _train_step(model, opt, gen)
            pre = [p.detach().clone() for p in model.parameters()]
            synced = eng.step(t)
            steps.append({"pre": pre, "post": [p.detach().clone() for p in model.parameters()], "synced": synced})
        out[name] = {"init": init, "steps": steps}
    return out


def _scenario_adacomm(rank: int) -> dict:
    """Each rank passes a different loss; both must choose the same periods, from the mean loss."""
    model = _model(seed=0, bn=False)
    sched = S.cosine(lr=0.1, total_steps=60)
    eng = LocalSGD(model, AdaComm(h_0=2), sched, total_steps=60)
    periods, syncs = [eng.current_period], []
    for t in range(60):
        if eng.step(t, loss=(1 + rank) * (1.0 - t / 120)):
            syncs.append(t)
            periods.append(eng.current_period)
    return {"periods": periods, "syncs": syncs, "bytes": eng.bytes_sent, "rounds": eng.rounds,
            "n": sum(p.numel() for p in model.parameters())}


def _scenario_pma(rank: int) -> dict:
    """Our FixedH(4) vs torch's PeriodicModelAverager(period=4, warmup_steps=3) on identical runs."""
    from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager

    finals = {}
    for name in ("ours", "torch"):
        model = _model(seed=7, bn=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(400 + rank)
        if name == "ours":
            eng = LocalSGD(model, FixedH(4), total_steps=13)
            for t in range(13):
                _train_step(model, opt, gen)
                eng.step(t)
        else:
            pma = PeriodicModelAverager(period=4, warmup_steps=3)
            for t in range(13):
                _train_step(model, opt, gen)
                pma.average_parameters(model.parameters())
                if t == 12:  # our last step always syncs; torch's needs the explicit call
                    from torch.distributed.algorithms.model_averaging.utils import average_parameters

                    average_parameters(iter(model.parameters()), None)
        finals[name] = [p.detach().clone() for p in model.parameters()]
    return finals


class _Mixed(torch.nn.Module):
    """Parameters in two dtypes (two buckets) and a float64 buffer."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w32 = torch.nn.Parameter(torch.randn(5, 3, generator=g))
        self.w64 = torch.nn.Parameter(torch.randn(4, dtype=torch.float64, generator=g))
        self.register_buffer("stat64", torch.randn(2, dtype=torch.float64, generator=g))

    def forward(self, x):
        return (x @ self.w32).sum() + self.w64.pow(2).sum().float()


def _scenario_mixed_adam(rank: int) -> dict:
    """float32 + float64 tensors, Adam with its moments averaged (exp_avg, exp_avg_sq; not 'step')."""
    model = _Mixed(seed=rank)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    eng = LocalSGD(model, FixedH(2), optimizer=opt, average_momentum=True, total_steps=2, broadcast_init=False)
    gen = torch.Generator().manual_seed(600 + rank)
    pre = None
    for t in range(2):
        opt.zero_grad()
        model(torch.randn(2, 5, generator=gen)).backward()
        opt.step()
        model.stat64.add_(rank + 1.0)
        if t == 1:
            pre = {"tensors": [model.w32.detach().clone(), model.w64.detach().clone(), model.stat64.clone()]
                   + [opt.state[p][k].clone() for p in (model.w32, model.w64) for k in ("exp_avg", "exp_avg_sq")],
                   "steps": [opt.state[p]["step"].clone() for p in (model.w32, model.w64)]}
        eng.step(t)
    post = {"tensors": [model.w32.detach().clone(), model.w64.detach().clone(), model.stat64.clone()]
            + [opt.state[p][k].clone() for p in (model.w32, model.w64) for k in ("exp_avg", "exp_avg_sq")],
            "steps": [opt.state[p]["step"].clone() for p in (model.w32, model.w64)]}
    return {"pre": pre, "post": post, "buckets": eng.num_buckets, "bytes": eng.bytes_sent}


def _run_resumable(rank: int, interrupt_at: int | None) -> dict:
    """AdaComm + momentum averaging + outer step, 14 steps; optionally rebuilt from state_dicts."""
    sched = S.cosine(lr=0.1, total_steps=14)

    def build():
        model = _model(seed=rank, bn=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        eng = LocalSGD(model, AdaComm(h_0=2), sched, optimizer=opt, average_momentum=True,
                       outer_optimizer=OuterSGD(lr=0.7, momentum=0.9), total_steps=14)
        return model, opt, eng

    model, opt, eng = build()
    gen = torch.Generator().manual_seed(500 + rank)
    syncs = []
    for t in range(14):
        if interrupt_at is not None and t == interrupt_at:
            saved = {"model": model.state_dict(), "opt": opt.state_dict(), "eng": eng.state_dict(),
                     "gen": gen.get_state()}
            model, opt, eng = build()
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            eng.load_state_dict(saved["eng"])
            gen = torch.Generator()
            gen.set_state(saved["gen"])
        loss = _train_step(model, opt, gen, lr=sched(t))
        if eng.step(t, loss):
            syncs.append(t)
    return {"syncs": syncs, "rounds": eng.rounds, "bytes": eng.bytes_sent,
            "params": [p.detach().clone() for p in model.parameters()]}


def _run_example(rank: int, port: int) -> dict:
    """examples/own_loop_local_sgd.py's worker function (it sets up its own process group)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "own_loop_local_sgd.py"
    spec = importlib.util.spec_from_file_location("own_loop_local_sgd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train(rank, WORLD, port, EXAMPLE_STEPS)


def _worker(rank: int, port: int, example_port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    init_process_group(rank, WORLD, f"tcp://127.0.0.1:{port}", backend="gloo")
    try:
        res = {
            "mean_one_bucket": _scenario_mean(rank, 25 * 2**20),
            "mean_small_buckets": _scenario_mean(rank, SMALL_BUCKET),
            "last_step": _scenario_last_step(rank),
            "qsr_cosine": _scenario_qsr_cosine(rank),
            "diloco": _scenario_diloco(rank),
            "adacomm": _scenario_adacomm(rank),
            "pma": _scenario_pma(rank),
            "mixed_adam": _scenario_mixed_adam(rank),
            "resume_straight": _run_resumable(rank, None),
            "resume_interrupted": _run_resumable(rank, 5),
        }
    finally:
        torch.distributed.destroy_process_group()
    res["example"] = _run_example(rank, example_port)
    torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("sync_gloo")

    def ports() -> tuple[int, int]:
        a, b = free_port(), free_port()
        return (a, b) if a != b else ports()
    try:
        mp.spawn(_worker, args=(*ports(), str(outdir)), nprocs=WORLD, join=True)
    except mp.ProcessRaisedException as exc:  # retry once only if the free port was taken meanwhile
        if "address already in use" not in str(exc).lower():
            raise
        mp.spawn(_worker, args=(*ports(), str(outdir)), nprocs=WORLD, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _mean(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[torch.Tensor]:
    return [(x + y) / 2 for x, y in zip(a, b)]


def _assert_lists_equal(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("case", ["mean_one_bucket", "mean_small_buckets"])
def test_sync_gives_identical_mean_of_pre_sync_tensors(runs, case):
    r0, r1 = runs[0][case], runs[1][case]
    # closed form: round r syncs after step min(3(r+1), 8) - 1 -> steps 2, 5, 7
    assert [t for t, s in enumerate(r0["steps"]) if s["synced"]] == [2, 5, 7]
    for s0, s1 in zip(r0["steps"], r1["steps"]):
        for kind in ("params", "buffers", "momentum"):
            if s0["synced"]:
                mean = _mean(s0["pre"][kind], s1["pre"][kind])
                _assert_lists_equal(s0["post"][kind], s1["post"][kind])  # identical across ranks
                _assert_lists_equal(s0["post"][kind], mean, atol=1e-7)
            else:  # between syncs nothing is touched
                _assert_lists_equal(s0["post"][kind], s0["pre"][kind])
    # before the first sync the ranks really differed (different inits, different data)
    assert not torch.equal(r0["steps"][1]["post"]["params"][0], r1["steps"][1]["post"]["params"][0])


@pytest.mark.parametrize("case", ["mean_one_bucket", "mean_small_buckets"])
def test_rounds_and_bytes_closed_form(runs, case):
    r = runs[0][case]
    rounds = math.ceil(8 / 3)
    n = 2 * r["n_params"] + r["n_buffers"]  # params + momentum (one per param) + float buffers
    assert r["rounds"] == rounds
    assert r["bytes"] == rounds * 4 * n  # float32
    assert r["finalize"] is False  # the last step synced already


def test_buckets_split_by_size(runs):
    assert runs[0]["mean_one_bucket"]["buckets"] == 1
    # 200-byte buckets: every tensor above 200 bytes gets its own; 11 tensors in all
    assert runs[0]["mean_small_buckets"]["buckets"] > 4


def test_last_step_always_syncs_and_finalize_is_idempotent(runs):
    for r in runs:
        res = r["last_step"]
        assert res["qsr_syncs"] == [9]  # (1.0 / lr)^2 >= 100 > T: one round, cut at the last step
        assert res["qsr_final"] is False
        assert res["fixed_syncs"] == [3, 7]  # no total_steps: steps 8, 9 are left to finalize
        assert res["finalize"] == [True, False]
        assert res["rounds"] == 3
    _assert_lists_equal(runs[0]["last_step"]["params"], runs[1]["last_step"]["params"])


def _qsr_reference(total: int, h_base: int, alpha: float, h_max: int, lr0: float) -> list[int]:
    """Sync steps of QSR on cosine(lr0, total), written out from Gu et al. (2024), eq. (3)."""
    syncs, start = [], 0
    while start < total:
        lr = lr0 * (1 + math.cos(math.pi * start / total)) / 2
        h = h_max if lr == 0 else min(h_max, max(h_base, math.floor((alpha / lr) ** 2 + 1e-9)))
        end = min(start + h, total)
        syncs.append(end - 1)
        start = end
    return syncs


def test_qsr_periods_match_formula_on_cosine(runs):
    expected = _qsr_reference(300, h_base=2, alpha=0.3, h_max=64, lr0=0.1)
    r0, r1 = runs[0]["qsr_cosine"], runs[1]["qsr_cosine"]
    assert r0["syncs"] == r1["syncs"] == expected
    assert r0["rounds"] == len(expected)
    assert r0["bytes"] == len(expected) * 4 * r0["n"]
    assert expected[-1] == 299


def test_outer_sgd_lr1_no_momentum_equals_plain_averaging(runs):
    for r in runs:
        plain, outer = r["diloco"]["plain"], r["diloco"]["outer_lr1"]
        for a, b in zip(plain["steps"], outer["steps"]):
            _assert_lists_equal(a["post"], b["post"], atol=1e-6)


def test_outer_nesterov_step_moves_toward_the_average(runs):
    s0, s1 = runs[0]["diloco"]["nesterov"], runs[1]["diloco"]["nesterov"]
    _assert_lists_equal(s0["init"], s1["init"])  # broadcast_init
    lr, mu = 0.5, 0.9
    x_prev, buf = [x.clone() for x in s0["init"]], None
    for a, b in zip(s0["steps"], s1["steps"]):
        if not a["synced"]:
            continue
        avg = _mean(a["pre"], b["pre"])
        g = [x - m for x, m in zip(x_prev, avg)]  # pseudo-gradient x_prev - x_avg
        buf = g if buf is None else [mu * u + gi for u, gi in zip(buf, g)]
        x_prev = [x - lr * (gi + mu * u) for x, gi, u in zip(x_prev, g, buf)]  # Nesterov SGD
        _assert_lists_equal(a["post"], x_prev, atol=1e-5)
        _assert_lists_equal(b["post"], x_prev, atol=1e-5)
    # sign: in the first round Nesterov's step is lr * (1 + mu) * g = 0.95 g, so the model lands
    # 95% of the way from x_prev to the average (a wrong sign would move it away)
    first = next(i for i, s in enumerate(s0["steps"]) if s["synced"])
    avg = _mean(s0["steps"][first]["pre"], s1["steps"][first]["pre"])
    expected = [x + lr * (1 + mu) * (m - x) for x, m in zip(s0["init"], avg)]
    _assert_lists_equal(s0["steps"][first]["post"], expected, atol=1e-6)


def test_adacomm_periods_agree_across_ranks_and_follow_mean_loss(runs):
    r0, r1 = runs[0]["adacomm"], runs[1]["adacomm"]
    assert r0["periods"] == r1["periods"] and r0["syncs"] == r1["syncs"]
    # reference: H = ceil(sqrt((lr_0/lr_t) * (F_t/F_0)) * h_0), F = mean over ranks and over the round
    lr = S.cosine(lr=0.1, total_steps=60)
    start, f0, f, periods = 0, None, None, []
    while start < 60:
        ratio = 1.0 if f0 is None else f / f0
        h = min(math.ceil(math.sqrt(lr(0) / lr(start) * ratio) * 2 - 1e-9), 60 - start)
        periods.append(h)
        f = sum((1 + rk) * (1 - t / 120) for rk in range(2) for t in range(start, start + h)) / (2 * h)
        f0 = f if f0 is None else f0
        start += h
    assert r0["periods"][:-1] == periods
    assert r0["bytes"] == r0["rounds"] * 4 * (r0["n"] + 2)  # two loss slots ride along


def test_matches_torch_periodic_model_averager(runs):
    for r in runs:
        _assert_lists_equal(r["pma"]["ours"], r["pma"]["torch"], atol=1e-6)
    _assert_lists_equal(runs[0]["pma"]["ours"], runs[1]["pma"]["ours"])


def test_state_dict_round_trip_resumes_identically(runs):
    for r in runs:
        a, b = r["resume_straight"], r["resume_interrupted"]
        assert a["syncs"] == b["syncs"] and a["syncs"][-1] == 13
        assert (a["rounds"], a["bytes"]) == (b["rounds"], b["bytes"])
        _assert_lists_equal(a["params"], b["params"], atol=1e-6)
    _assert_lists_equal(runs[0]["resume_straight"]["params"], runs[1]["resume_straight"]["params"])


def test_mixed_dtypes_and_adam_moments(runs):
    r0, r1 = runs[0]["mixed_adam"], runs[1]["mixed_adam"]
    mean = _mean(r0["pre"]["tensors"], r1["pre"]["tensors"])
    _assert_lists_equal(r0["post"]["tensors"], r1["post"]["tensors"])
    _assert_lists_equal(r0["post"]["tensors"], mean, atol=1e-7)
    assert [t.dtype for t in r0["post"]["tensors"][:3]] == [torch.float32, torch.float64, torch.float64]
    _assert_lists_equal(r0["post"]["steps"], r0["pre"]["steps"])  # Adam's step count is not averaged
    assert r0["buckets"] == 2  # one per dtype
    # one round: float32 (w32 + its 2 moments) and float64 (w64 + its 2 moments + stat64)
    assert r0["bytes"] == 4 * (15 * 3) + 8 * (4 * 3 + 2)


def test_example_own_loop_syncs_as_qsr_says(runs):
    # reference: walk the QSR formula over the example's cosine schedule
    sched, rule, start, expected = S.cosine(lr=0.1, total_steps=EXAMPLE_STEPS), QSR(4, 0.2), 0, 0
    while start < EXAMPLE_STEPS:
        start += rule.next_period(start, sched(start), total_steps=EXAMPLE_STEPS)
        expected += 1
    r0, r1 = runs[0]["example"], runs[1]["example"]
    assert r0["rounds"] == r1["rounds"] == expected
    assert r0["accuracy"] == r1["accuracy"] > 0.5  # same averaged model on both ranks, and it learned
