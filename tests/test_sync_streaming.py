"""The communication-efficient engine on a real gloo process group (2 processes, tcp://127.0.0.1):
streaming fragments, compressed exchange with error feedback, delayed (overlapped) application.

References: plain-torch loops run in the same two processes (flat all_reduce of the parameters, the
delayed update with an ``async_op=True`` all_reduce, torch's SGD as the outer optimizer), and, for the
compressed modes, a replay written out here from both ranks' recorded pre-sync tensors.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from distsched import schedules as S
from distsched.sync import FixedH, Int8Codec, LocalSGD, LRCompression, OuterSGD, free_port, init_process_group

WORLD = 2
# Linear(6,16): 112, Linear(16,16): 272, Linear(16,3): 51 elements; the best cut in 2 is
# [layer 0] | [layers 1, 2] (largest part 323 against 384 for the other cut)
FRAG_PARAMS = {0: [0, 1], 1: [2, 3, 4, 5]}


def _model(bn: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 16)]
    if bn:
        layers.append(torch.nn.BatchNorm1d(16))
    layers += [torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)]
    return torch.nn.Sequential(*layers)


def _train_step(model, opt, gen) -> float:
    x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss)


def _params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _averaged(model) -> list[torch.Tensor]:
    return list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]


def _copy_flat_(tensors, flat: torch.Tensor) -> None:
    """Write ``flat`` (the tensors concatenated) back into ``tensors``."""
    with torch.no_grad():
        off = 0
        for x in tensors:
            x.copy_(flat[off : off + x.numel()].view_as(x))
            off += x.numel()


def _allreduce_mean_(tensors) -> None:
    """The written-out average: one flat all_reduce of ``tensors``, divided by the world size."""
    flat = torch.cat([x.detach().reshape(-1) for x in tensors])
    dist.all_reduce(flat)
    _copy_flat_(tensors, flat.div_(WORLD))


def _outer_apply(anchors, params, outer) -> None:
    """DiLoCo outer step written out: g = x_prev - x_avg, torch SGD on x_prev, model <- x_prev."""
    with torch.no_grad():
        for a, p in zip(anchors, params):
            a.grad = a - p
    outer.step()
    outer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for a, p in zip(anchors, params):
            p.copy_(a)


# ---------------------------------------------------------------------------- scenarios (per rank)
def _f1_diloco_equals_plain_engine(rank: int) -> dict:
    """fragments=1, compression='none', DiLoCo, against the engine written out: every 3 steps one flat
    all_reduce of parameters + BatchNorm buffers, divided by 2, then the outer step on the parameters.
    (Without an outer optimizer, F=1 is tests/test_sync_engine.py's plain averaging.)"""
    T, H = 9, 3
    out = {}
    for name in ("engine", "reference"):
        model = _model(bn=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(10 + rank)
        outer_f = OuterSGD(lr=0.7, momentum=0.9)
        if name == "engine":
            eng = LocalSGD(model, FixedH(H), total_steps=T, fragments=1, compression="none", outer_optimizer=outer_f)
        else:
            anchors = _params(model)
            outer = outer_f(anchors)
        for t in range(T):
            _train_step(model, opt, gen)
            if name == "engine":
                eng.step(t)
            elif (t + 1) % H == 0:
                _allreduce_mean_(_averaged(model))
                _outer_apply(anchors, list(model.parameters()), outer)
        out[name] = [x.detach().clone() for x in _averaged(model)]
        if name == "engine":
            out["bytes"] = eng.bytes_sent
    return out


def _fragments_plain(rank: int) -> dict:
    """F=2, FixedH(4), T=12, full precision: fragment 0 syncs after steps 1, 5, 9, 11 and fragment 1
    after 3, 7, 11; reference: a flat all_reduce of that fragment's parameters at those steps."""
    T = 12
    due = {1: [0], 3: [1], 5: [0], 7: [1], 9: [0], 11: [0, 1]}
    out = {}
    for name in ("engine", "reference"):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(20 + rank)
        if name == "engine":
            eng = LocalSGD(model, FixedH(4), total_steps=T, fragments=2)
        events, step_bytes = {}, []
        for t in range(T):
            _train_step(model, opt, gen)
            if name == "engine":
                before = eng.bytes_sent
                if eng.step(t):
                    events[t] = list(eng.synced_fragments)
                step_bytes.append(eng.bytes_sent - before)
            else:
                params = list(model.parameters())
                for f in due.get(t, []):
                    _allreduce_mean_([params[i] for i in FRAG_PARAMS[f]])
        out[name] = _params(model)
        if name == "engine":
            out.update(events=events, step_bytes=step_bytes, peak=eng.peak_step_bytes, rounds=eng.rounds)
    return out


def _recorded(rank: int, codec, fragments: int, H: int, T: int, outer: bool, delay: int) -> dict:
    """An engine run recording, at every step, the parameters before and after ``engine.step``."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(30 + rank)
    eng = LocalSGD(model, FixedH(H), S.cosine(lr=0.1, total_steps=T), total_steps=T, fragments=fragments,
                   compression=codec, delay=delay, outer_optimizer=OuterSGD(lr=0.7, momentum=0.9) if outer else None)
    init, steps = _params(model), []
    for t in range(T):
        _train_step(model, opt, gen)
        pre = _params(model)
        synced = eng.step(t)
        steps.append({"pre": pre, "post": _params(model), "synced": list(eng.synced_fragments) if synced else []})
    return {"init": init, "steps": steps, "bytes": eng.bytes_sent, "peak": eng.peak_step_bytes}


def _apply_delayed(model, anchors, outer_opt, buf, work) -> None:
    work.wait()
    _copy_flat_(list(model.parameters()), torch.div(buf, WORLD))
    if outer_opt is not None:
        _outer_apply(anchors, list(model.parameters()), outer_opt)


def _delayed_reference(rank: int, outer: bool) -> dict:
    """Delayed outer update written out in plain torch: at sync step t (every 4 steps, T = 12) an
    ``async_op=True`` all_reduce of a copy of the parameters starts; after step t + 2 the model takes
    the average (then the outer step); the last step applies at once."""
    T, H, tau = 12, 4, 2
    out = {}
    for name in ("engine", "reference"):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(40 + rank)
        outer_f = OuterSGD(lr=0.7, momentum=0.9) if outer else None
        if name == "engine":
            eng = LocalSGD(model, FixedH(H), total_steps=T, delay=tau, outer_optimizer=outer_f)
        else:
            anchors = _params(model)
            outer_opt = outer_f(anchors) if outer else None
            pending = None
        for t in range(T):
            _train_step(model, opt, gen)
            if name == "engine":
                eng.step(t)
                continue
            if pending is not None and pending[0] == t:
                _apply_delayed(model, anchors, outer_opt, *pending[1:])
                pending = None
            if (t + 1) % H == 0:
                buf = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
                work = dist.all_reduce(buf, async_op=True)
                if t == T - 1:
                    _apply_delayed(model, anchors, outer_opt, buf, work)
                else:
                    pending = (t + tau, buf, work)
        out[name] = _params(model)
        if name == "engine":
            out["bytes"] = eng.bytes_sent
    return out


def _resumable(rank: int, interrupt_at: int | None) -> dict:
    """F=2, int8 + EF, delay 1, DiLoCo; optionally rebuilt from state_dicts mid-run (before step 6
    fragment 0's exchange is in flight: sent after step 5, applied after step 6)."""
    T = 14

    def build():
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        eng = LocalSGD(model, FixedH(4), total_steps=T, fragments=2, compression=Int8Codec(block=32), delay=1,
                       optimizer=opt, average_momentum=True, outer_optimizer=OuterSGD(lr=0.7, momentum=0.9))
        return model, opt, eng

    model, opt, eng = build()
    gen = torch.Generator().manual_seed(50 + rank)
    in_flight = None
    for t in range(T):
        if t == interrupt_at:
            in_flight = [p is not None for p in eng._pending]
            saved = {"model": model.state_dict(), "opt": opt.state_dict(), "eng": eng.state_dict(),
                     "gen": gen.get_state()}
            model, opt, eng = build()
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            eng.load_state_dict(saved["eng"])
            gen = torch.Generator()
            gen.set_state(saved["gen"])
        _train_step(model, opt, gen)
        eng.step(t)
    return {"params": _params(model), "bytes": eng.bytes_sent, "rounds": eng.rounds, "in_flight": in_flight}


def _worker(rank: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)
    early = LocalSGD(_model(), FixedH(1))  # built before the process group: world size 1
    init_process_group(rank, WORLD, f"tcp://127.0.0.1:{port}", backend="gloo")
    try:
        try:
            early.step(0)
            early_error = None
        except RuntimeError as exc:
            early_error = str(exc)
        res = {
            "early_error": early_error,
            "f1_diloco": _f1_diloco_equals_plain_engine(rank),
            "fragments": _fragments_plain(rank),
            "int8_f2": _recorded(rank, Int8Codec(block=16), fragments=2, H=3, T=9, outer=False, delay=0),
            "bf16_diloco": _recorded(rank, "bf16", fragments=1, H=3, T=9, outer=True, delay=0),
            "int8_delay": _recorded(rank, Int8Codec(block=16), fragments=2, H=4, T=12, outer=True, delay=2),
            "lr_codec": _recorded(rank, LRCompression(lr_peak=0.1), fragments=1, H=3, T=12, outer=False, delay=0),
            "fp32_f2_h4": _recorded(rank, None, fragments=2, H=4, T=12, outer=False, delay=0),
            "int8_f2_h4": _recorded(rank, Int8Codec(block=16), fragments=2, H=4, T=12, outer=False, delay=0),
            "delay_plain": _delayed_reference(rank, outer=False),
            "delay_diloco": _delayed_reference(rank, outer=True),
            "resume_straight": _resumable(rank, None),
            "resume_interrupted": _resumable(rank, 6),
        }
    finally:
        dist.destroy_process_group()
    torch.save(res, os.path.join(outdir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[dict]:
    outdir = tmp_path_factory.mktemp("sync_streaming")
    try:
        mp.spawn(_worker, args=(free_port(), str(outdir)), nprocs=WORLD, join=True)
    except mp.ProcessRaisedException as exc:  # retry once only if the free port was taken meanwhile
        if "address already in use" not in str(exc).lower():
            raise
        mp.spawn(_worker, args=(free_port(), str(outdir)), nprocs=WORLD, join=True)
    return [torch.load(outdir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------- tests
def test_engine_built_before_the_process_group_refuses_to_step(runs):
    for r in runs:
        assert r["early_error"] is not None and "built before torch.distributed was initialized" in r["early_error"]


def test_one_fragment_without_compression_equals_the_plain_engine_bit_for_bit(runs):
    """DiLoCo with F=1: the parameters take the outer step, the BatchNorm buffers the plain average.
    Plain averaging with F=1 (the mean of the pre-sync tensors, its bytes) is checked in
    tests/test_sync_engine.py (test_sync_gives_identical_mean_of_pre_sync_tensors,
    test_rounds_and_bytes_closed_form)."""
    case = "f1_diloco"
    for r in runs:
        assert _equal(r[case]["engine"], r[case]["reference"])
    assert _equal(runs[0][case]["engine"], runs[1][case]["engine"])
    n = sum(x.numel() for x in runs[0][case]["engine"])
    assert runs[0][case]["bytes"] == 3 * 4 * n  # three rounds of float32


def test_fragments_sync_at_their_offsets_and_equal_the_written_out_reference(runs):
    for r in runs:
        res = r["fragments"]
        assert res["events"] == {1: [0], 3: [1], 5: [0], 7: [1], 9: [0], 11: [0, 1]}
        assert _equal(res["engine"], res["reference"])
        assert res["rounds"] == 3  # fragment 1's syncs
    res = runs[0]["fragments"]
    frag_bytes = [4 * 112, 4 * (272 + 51)]
    assert res["step_bytes"] == [0, frag_bytes[0], 0, frag_bytes[1], 0, frag_bytes[0], 0, frag_bytes[1], 0,
                                 frag_bytes[0], 0, sum(frag_bytes)]
    assert res["peak"] == sum(frag_bytes)  # the last step syncs every fragment
    assert max(res["step_bytes"][:-1]) == frag_bytes[1] < sum(frag_bytes)


def _int8(s: torch.Tensor, block: int) -> torch.Tensor:
    out = torch.zeros(s.numel())
    for i in range(0, s.numel(), block):
        c = s[i : i + block]
        m = c.abs().max()
        if m > 0:
            scale = m / 127.0
            out[i : i + block] = torch.round(c / scale).clamp(-127, 127) * scale
    return out


def _replay(runs, case: str, quantize, frags: dict[int, list[int]], outer: bool,
            sends: dict[int, list[int]] | None = None, applies: dict[tuple[int, int], int] | None = None):
    """Replays a compressed run from both ranks' pre-sync parameters: per fragment, anchor x_a
    (identical on both), residual e_k; at a send of step t: s_k = (x_k - x_a) + e_k, q_k = Q(s_k),
    e_k = s_k - q_k; at its application: x_avg = x_a + (q_0 + q_1) / 2, the outer step, x_a <- the
    result, and the fragment takes it on both ranks. Checks every step's post-step parameters."""
    r0, r1 = runs[0][case], runs[1][case]
    assert _equal(r0["init"], r1["init"])  # broadcast at construction
    cat = lambda ts, idx: torch.cat([ts[i].reshape(-1) for i in idx])  # noqa: E731
    anchor = {f: cat(r0["init"], idx) for f, idx in frags.items()}
    resid = {(f, k): torch.zeros_like(anchor[f]) for f in frags for k in range(2)}
    outer_a = {f: [r0["init"][i].clone() for i in idx] for f, idx in frags.items()}
    outer_opt = {f: torch.optim.SGD(outer_a[f], lr=0.7, momentum=0.9, nesterov=True) for f in frags}
    current = [list(r0["init"]), list(r1["init"])]  # what the replay says each rank holds
    in_flight: dict[int, tuple[int, torch.Tensor]] = {}
    for t, (s0, s1) in enumerate(zip(r0["steps"], r1["steps"])):
        current = [list(s0["pre"]), list(s1["pre"])]  # local steps are the ranks' own

        def finish(f, current=current):
            _, total = in_flight.pop(f)
            x = anchor[f] + total / WORLD
            if outer:
                off = 0
                for a in outer_a[f]:
                    a.grad = a - x[off : off + a.numel()].view_as(a)
                    off += a.numel()
                outer_opt[f].step()
                x = torch.cat([a.detach().reshape(-1) for a in outer_a[f]])
            anchor[f] = x.clone()
            for k in range(2):
                off = 0
                for i in frags[f]:
                    current[k][i] = x[off : off + current[k][i].numel()].view_as(current[k][i])
                    off += current[k][i].numel()

        for f in sorted(in_flight):
            if in_flight[f][0] <= t:
                finish(f)
        due = sends.get(t, []) if sends is not None else s0["synced"]
        assert s0["synced"] == s1["synced"] == due, t
        for f in due:
            total = None
            for k in range(2):
                x_k = cat(current[k], frags[f])
                s_k = (x_k - anchor[f]) + resid[(f, k)]
                q_k = quantize(s_k, t)
                resid[(f, k)] = s_k - q_k
                total = q_k if total is None else total + q_k
            in_flight[f] = ((applies or {}).get((f, t), t), total)
            if in_flight[f][0] <= t:
                finish(f)
        for k, s in enumerate((s0, s1)):
            assert _equal(s["post"], current[k]), (case, t, k)


def test_int8_with_error_feedback_on_two_fragments_equals_the_replay(runs):
    _replay(runs, "int8_f2", lambda s, t: _int8(s, 16), FRAG_PARAMS, outer=False,
            sends={1: [0], 2: [1], 4: [0], 5: [1], 7: [0], 8: [0, 1]})


def test_bf16_diloco_equals_the_replay(runs):
    _replay(runs, "bf16_diloco", lambda s, t: s.to(torch.bfloat16).float(), {0: list(range(6))}, outer=True,
            sends={2: [0], 5: [0], 8: [0]})


def test_int8_delayed_diloco_on_two_fragments_equals_the_replay(runs):
    # sends: fragment 0 after steps 1, 5, 9, 11; fragment 1 after 3, 7, 11. Applied tau = 2 steps later,
    # never after the fragment's next send, and at once on the last step
    applies = {(0, 1): 3, (0, 5): 7, (0, 9): 11, (0, 11): 11, (1, 3): 5, (1, 7): 9, (1, 11): 11}
    _replay(runs, "int8_delay", lambda s, t: _int8(s, 16), FRAG_PARAMS, outer=True,
            sends={1: [0], 3: [1], 5: [0], 7: [1], 9: [0], 11: [0, 1]}, applies=applies)
    assert _equal(runs[0]["int8_delay"]["steps"][-1]["post"], runs[1]["int8_delay"]["steps"][-1]["post"])


def test_lr_driven_compression_switches_from_bf16_to_int8_as_the_lr_decays(runs):
    # cosine(0.1, T=12): lr_t / lr_peak >= 0.5 up to step 6, so syncs after steps 2, 5 send bf16 and
    # after 8, 11 int8 (one block: 435 elements); error feedback carries across the switch
    lr = S.cosine(lr=0.1, total_steps=12)
    assert [lr(t) / 0.1 >= 0.5 for t in (2, 5, 8, 11)] == [True, True, False, False]
    _replay(runs, "lr_codec", lambda s, t: s.to(torch.bfloat16).float() if t <= 6 else _int8(s, 1024),
            {0: list(range(6))}, outer=False, sends={2: [0], 5: [0], 8: [0], 11: [0]})
    assert runs[0]["lr_codec"]["bytes"] == 2 * (2 * 435) + 2 * (435 + 4)


def test_int8_bytes_are_the_payload_and_a_quarter_of_float32(runs):
    fp32, int8 = runs[0]["fp32_f2_h4"], runs[0]["int8_f2_h4"]
    sizes = [112, 323]  # per fragment; syncs: fragment 0 four times, fragment 1 three times
    assert fp32["bytes"] == 4 * (4 * sizes[0] + 3 * sizes[1])
    payload = [n + 4 * -(-n // 16) for n in sizes]  # int8 values + one float32 scale per 16
    assert int8["bytes"] == 4 * payload[0] + 3 * payload[1]
    assert int8["bytes"] / fp32["bytes"] < 0.32
    assert int8["peak"] == sum(payload) and max(payload) < 4 * sizes[1]


@pytest.mark.parametrize("case", ["delay_plain", "delay_diloco"])
def test_delayed_update_equals_the_plain_torch_async_reference(runs, case):
    for r in runs:
        assert _equal(r[case]["engine"], r[case]["reference"])
    assert _equal(runs[0][case]["engine"], runs[1][case]["engine"])
    assert runs[0][case]["bytes"] == 3 * 4 * sum(p.numel() for p in runs[0][case]["engine"])


def test_resume_with_an_exchange_in_flight_is_exact(runs):
    for r in runs:
        a, b = r["resume_straight"], r["resume_interrupted"]
        assert b["in_flight"] == [True, False]  # the checkpoint carried a pending exchange
        assert _equal(a["params"], b["params"])
        assert (a["bytes"], a["rounds"]) == (b["bytes"], b["rounds"])
    assert _equal(runs[0]["resume_straight"]["params"], runs[1]["resume_straight"]["params"])
