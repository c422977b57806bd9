"""DP-SGD step time: distsched's wrapper (``privacy.private_training``: Opacus ``GradSampleModule`` + ``DPOptimizer``
plus distsched's accountant hook, budget guard check and noise scheduler) against plain Opacus
(``PrivacyEngine.make_private``, RDP accountant), same model, same data, same batches.

Workload: scikit-learn digits (1797 x 64, scaled to [0, 1]), MLP 64-128-10, SGD lr 0.1, C = 1, sigma = 1.0,
Poisson batches with q = 0.04 (expected 72 examples) drawn once and fed to both, one torch thread.
Each repeat times a block of ``--steps`` steps of each contender, interleaved (A B B A ...) so that the
machine's load hits both alike, after a warm-up; the figure is the median over blocks of the per-step
time. The bookkeeping is also timed alone. Target: overhead <= 5%.

    .venv/bin/python benchmarks/privacy_step_time.py          # writes benchmarks/results/privacy_step_time.json

``--modes``: the clipping modes (``privacy.clipping``: hooks, functorch, ew, ghost, and what auto picks)
against plain Opacus hooks and non-private training, on ``--models``: the digits MLP (``mlp``), a small
embedding LM (``lm``: vocabulary 2048, context 16, Embedding 64 -> Linear 256 -> Linear 2048) and the ``gpt``
transformer of ``examples/lm_dp.yaml`` (``gpt``: bytes, context 64, 2 layers, dim 128, 0.47 M parameters; a
target per position), ``gpt-wide`` (the same at 4 layers, dim 256: 3.3 M parameters), ``cnn`` (distsched's
two-conv digits CNN), batch ``--batch`` (64).
Each contender runs in its own process (one torch thread); step time is the median over blocks. Memory, two
ways: the peak of live tensor memory during one step above what is live before it (torch's profiler; what
``torch.cuda.max_memory_allocated`` measures on a GPU), and the rise of the process's peak RSS during training
(also counts the allocator's fragmentation and lazily loaded code; coarse at this scale).

    .venv/bin/python benchmarks/privacy_step_time.py --modes  # writes benchmarks/results/privacy_clipping_modes.json
    .venv/bin/python benchmarks/privacy_step_time.py --modes --models gpt --steps 1 --repeats 3
    .venv/bin/python benchmarks/privacy_step_time.py --modes --models lm,gpt --contenders non-private,opacus-ghost,ghost

``opacus-ghost``: Opacus' own ghost clipping (``make_private(grad_sample_mode="ghost")``), against which
distsched's ghost optimizer (:mod:`distsched.privacy.ghost`) is measured.

``--interleaved`` (with ``--modes``): every contender in one process, one block of each in turn (the order
rotated every round), the median per contender: the ratios hold on a loaded, shared machine where
one-after-another runs see different loads (step time only; memory needs a process per contender).

    .venv/bin/python benchmarks/privacy_step_time.py --modes --interleaved --models gpt \\
        --contenders non-private,opacus-hooks,hooks,ghost --steps 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = "non-private,opacus-hooks,hooks,functorch,ew,ghost,auto"


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    return torch.tensor(raw.data / 16.0, dtype=torch.float32), torch.tensor(raw.target, dtype=torch.int64)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _lm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(2048, 64), nn.Flatten(), nn.Linear(16 * 64, 256), nn.ReLU(), nn.Linear(256, 2048))


def _gpt(layers: int = 2, dim: int = 128) -> nn.Module:
    from distsched.data.gpt import GPT

    torch.manual_seed(0)
    return GPT(256, 64, layers=layers, heads=4, dim=dim)  # examples/lm_dp.yaml's model: bytes, context 64, 0.47 M


def _workload(name: str, batch: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    if name in ("mlp", "cnn"):
        x, y = _data()
        if name == "mlp":
            return _model(), x[:batch], y[:batch]
        from distsched.data.models import cnn

        torch.manual_seed(0)
        return cnn((1, 8, 8), 10), x[:batch].reshape(-1, 1, 8, 8), y[:batch]
    g = torch.Generator().manual_seed(0)
    if name in ("gpt", "gpt-wide"):  # next-byte prediction: a target per position
        model = _gpt() if name == "gpt" else _gpt(layers=4, dim=256)
        return model, torch.randint(0, 256, (batch, 64), generator=g), torch.randint(0, 256, (batch, 64), generator=g)
    return _lm(), torch.randint(0, 2048, (batch, 16), generator=g), torch.randint(0, 2048, (batch,), generator=g)


def _peak_tensor_mib(model, opt, loss_fn, x, y) -> float:
    """Peak of live tensor memory torch allocates during one step, above what is live before it (torch's CPU
    allocator as its profiler records it; on a GPU, ``torch.cuda.max_memory_allocated`` measures the same)."""
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    opt.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss_fn(model(x), y).backward()
        opt.step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    finally:
        os.unlink(path)
    mem = [e["args"] for e in events if e.get("name") == "[memory]"]
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return (max(m["Total Allocated"] for m in mem) - start) / 2**20


def _build(model_name: str, contender: str, batch: int) -> tuple:
    """``(model, optimizer, loss_fn, mode, x, y)`` of one contender on one workload."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from distsched.data import token_cross_entropy
    from distsched.privacy import PerExampleLoss, private_training

    model, x, y = _workload(model_name, batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn: nn.Module = PerExampleLoss(token_cross_entropy)  # the mean over every target, as the training loop
    mode = contender
    if contender == "opacus-hooks":
        model, opt, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=opt, data_loader=DataLoader(TensorDataset(x, y), batch_size=batch),
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    elif contender == "opacus-ghost":  # Opacus' own ghost clipping (PrivacyEngine, grad_sample_mode="ghost")
        model, opt, loss_fn, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=opt, data_loader=DataLoader(TensorDataset(x, y), batch_size=batch),
            noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode="ghost",
            criterion=loss_fn)
    elif contender != "non-private":
        pt = private_training(model, opt, sample_rate=0.01, expected_batch_size=batch, max_grad_norm=1.0,
                              delta=1e-5, noise=1.0, noise_seed=0, clipping=contender)
        model, opt, loss_fn, mode = pt.model, pt.optimizer, pt.loss_fn(loss_fn), pt.clipping
    return model, opt, loss_fn, mode, x, y


def _block(model, opt, loss_fn, x, y, steps: int) -> float:
    """Seconds per step over ``steps`` steps."""
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def _one(model_name: str, contender: str, steps: int, repeats: int, batch: int) -> dict:
    """Step time (median over ``repeats`` blocks of ``steps``) and peak-RSS rise of one contender."""
    import resource

    model, opt, loss_fn, mode, x, y = _build(model_name, contender, batch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _block(model, opt, loss_fn, x, y, steps)
    times = [_block(model, opt, loss_fn, x, y, steps) for _ in range(repeats)]
    rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    peak = _peak_tensor_mib(model, opt, loss_fn, x, y)
    return {"model": model_name, "contender": contender, "mode": mode, "ms_per_step": statistics.median(times) * 1e3,
            "peak_rss_rise_mib": rise, "peak_tensor_mib": peak, "batch": batch}


def interleaved_main(args: argparse.Namespace) -> None:
    """``--interleaved``: every contender built in one process, its blocks timed in turn (the order rotated
    each round), so that the machine's load hits all alike; step time only (memory: ``--modes``)."""
    import sys

    names = args.contenders.split(",")
    rows = []
    for model_name in args.models.split(","):
        built = {c: _build(model_name, c, args.batch) for c in names}
        times: dict[str, list[float]] = {c: [] for c in names}
        for c in names:  # warm-up
            _block(*built[c][:3], *built[c][4:], args.steps)
        for r in range(args.repeats):
            for c in names[r % len(names):] + names[:r % len(names)]:
                times[c].append(_block(*built[c][:3], *built[c][4:], args.steps))
            print(f"  {model_name} round {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        for c in names:
            rows.append({"model": model_name, "contender": c, "mode": built[c][3], "batch": args.batch,
                         "ms_per_step": statistics.median(times[c]) * 1e3, "all_ms": [t * 1e3 for t in times[c]]})
    print(f"{'model':<8} {'contender':<13} {'mode':<12} {'ms/step':>9} {'vs Opacus':>10} {'vs non-private':>15}")
    for r in rows:
        ref = next((o for o in rows if o["model"] == r["model"] and o["contender"] == "opacus-hooks"), r)
        base = next((o for o in rows if o["model"] == r["model"] and o["contender"] == "non-private"), r)
        r["vs_opacus_hooks"] = r["ms_per_step"] / ref["ms_per_step"]
        r["vs_non_private"] = r["ms_per_step"] / base["ms_per_step"]
        print(f"{r['model']:<8} {r['contender']:<13} {r['mode']:<12} {r['ms_per_step']:>9.1f} "
              f"{r['vs_opacus_hooks']:>9.2f}x {r['vs_non_private']:>14.2f}x")
    tag = "_".join(args.models.split(",")) + "_" + "_".join(c.replace("-", "") for c in names)
    out = Path(args.out).with_name(f"privacy_clipping_interleaved_{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "steps": args.steps, "repeats": args.repeats, "batch": args.batch}, indent=2))
    print(f"wrote {out}")


def modes_main(args: argparse.Namespace) -> None:
    import subprocess
    import sys

    rows = []
    models = args.models.split(",")
    for model_name in models:
        for contender in args.contenders.split(","):
            cmd = [sys.executable, __file__, "--one", model_name, contender, "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--batch", str(args.batch)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {model_name} {contender}: {rows[-1]['ms_per_step']:.1f} ms/step", file=sys.stderr, flush=True)
    print(f"{'model':<5} {'contender':<13} {'mode':<10} {'ms/step':>9} {'vs Opacus':>10} {'vs non-private':>15} "
          f"{'peak tensor MiB':>16} {'vs non-private':>15} {'RSS rise MiB':>13} {'vs non-private':>15}")
    for r in rows:
        ref = next((o for o in rows if o["model"] == r["model"] and o["contender"] == "opacus-hooks"), r)
        base = next(o for o in rows if o["model"] == r["model"] and o["contender"] == "non-private")
        r["vs_opacus_hooks"] = r["ms_per_step"] / ref["ms_per_step"]  # 1.0 when Opacus hooks did not run
        r["vs_non_private"] = r["ms_per_step"] / base["ms_per_step"]
        r["tensor_vs_non_private"] = r["peak_tensor_mib"] / base["peak_tensor_mib"]
        r["rss_vs_non_private"] = r["peak_rss_rise_mib"] / base["peak_rss_rise_mib"]
        print(f"{r['model']:<5} {r['contender']:<13} {r['mode']:<10} {r['ms_per_step']:>9.3f} "
              f"{r['vs_opacus_hooks']:>9.2f}x {r['vs_non_private']:>14.2f}x {r['peak_tensor_mib']:>16.2f} "
              f"{r['tensor_vs_non_private']:>14.2f}x {r['peak_rss_rise_mib']:>13.1f} {r['rss_vs_non_private']:>14.2f}x")
    tag = "" if models == ["mlp", "lm"] and args.contenders == CONTENDERS else "_" + "_".join(models)
    if args.contenders != CONTENDERS:
        tag += "_" + "_".join(c.replace("-", "") for c in args.contenders.split(","))
    out = Path(args.out).with_name(f"privacy_clipping_modes{tag}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "steps": args.steps, "repeats": args.repeats, "batch": args.batch}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=151, help="blocks per contender, interleaved")
    ap.add_argument("--coupling", action="store_true", help="also attach the noise-aware LR controller")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "privacy_step_time.json"))
    ap.add_argument("--modes", action="store_true", help="compare the clipping modes (see the module docstring)")
    ap.add_argument("--interleaved", action="store_true",
                    help="--modes: all contenders in one process, blocks interleaved (step time only)")
    ap.add_argument("--batch", type=int, default=64, help="--modes: batch size")
    ap.add_argument("--models", default="mlp,lm", help="--modes: comma-separated workloads: mlp, lm, gpt, gpt-wide,"
                    " cnn")
    ap.add_argument("--contenders", default=CONTENDERS, help="--modes: comma-separated, of " + CONTENDERS
                    + ",opacus-ghost (non-private is needed for the ratios)")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "CONTENDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if args.one:
        print(json.dumps(_one(args.one[0], args.one[1], args.steps, args.repeats, args.batch)))
        return
    if args.modes and args.interleaved:
        interleaved_main(args)
        return
    if args.modes:
        modes_main(args)
        return
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from distsched.privacy import PoissonBatches, private_training

    x, y = _data()
    n, q, sigma = len(y), 0.04, 1.0
    sampler = PoissonBatches(np.arange(n), q, seed=0)
    batches = [sampler.draw(t) for t in range(args.steps)]
    batches = [(x[b], y[b]) for b in batches]

    m_ref = _model()
    engine = PrivacyEngine(accountant="rdp")
    loader = DataLoader(TensorDataset(x, y), batch_size=int(round(q * n)))
    ref_model, ref_opt, _ = engine.make_private(
        module=m_ref, optimizer=torch.optim.SGD(m_ref.parameters(), lr=0.1), data_loader=loader,
        noise_multiplier=sigma, max_grad_norm=1.0, poisson_sampling=False,
    )
    m_ours = _model()
    pt = private_training(m_ours, torch.optim.SGD(m_ours.parameters(), lr=0.1), sample_rate=q,
                          expected_batch_size=q * n, max_grad_norm=1.0, delta=1e-5, noise=sigma,
                          target_epsilon=1e9, lr_coupling=args.coupling, noise_seed=0)

    def run_ref() -> float:
        t0 = time.perf_counter()
        for bx, by in batches:
            _step(ref_model, ref_opt, bx, by)
        return (time.perf_counter() - t0) / len(batches)

    def run_ours() -> float:
        t0 = time.perf_counter()
        for bx, by in batches:
            if not pt.allows_next_step():
                raise RuntimeError("budget exhausted in the benchmark")
            _step(pt.model, pt.optimizer, bx, by)
            pt.after_step()
        return (time.perf_counter() - t0) / len(batches)

    run_ref(), run_ours()  # warm-up
    ref_t, ours_t = [], []
    for r in range(args.repeats):
        if r % 2 == 0:
            ref_t.append(run_ref())
            ours_t.append(run_ours())
        else:
            ours_t.append(run_ours())
            ref_t.append(run_ref())
    ref_med, ours_med = statistics.median(ref_t), statistics.median(ours_t)
    # the bookkeeping alone, outside the step: guard check + accountant record + noise schedule (+ the LR
    # controller reading the privatized gradient, with --coupling), against Opacus' own RDPAccountant.step
    from opacus.accountants import RDPAccountant

    from distsched.privacy import Accountant

    acc, ref_acc, k = Accountant("rdp"), RDPAccountant(), 20000
    t0 = time.perf_counter()
    for _ in range(k):
        pt.allows_next_step()
        acc.step(sigma, q)
        pt.after_step()
    ours_book = (time.perf_counter() - t0) / k
    t0 = time.perf_counter()
    for _ in range(k):
        ref_acc.step(noise_multiplier=sigma, sample_rate=q)
    ref_book = (time.perf_counter() - t0) / k
    overhead = ours_med / ref_med - 1.0
    res = {
        "opacus_ms_per_step": ref_med * 1e3, "distsched_ms_per_step": ours_med * 1e3, "overhead": overhead,
        "distsched_bookkeeping_us": ours_book * 1e6, "opacus_bookkeeping_us": ref_book * 1e6,
        "steps_per_repeat": args.steps, "repeats": args.repeats, "coupling": args.coupling,
        "opacus_all_ms": [t * 1e3 for t in ref_t], "distsched_all_ms": [t * 1e3 for t in ours_t],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"plain Opacus {ref_med * 1e3:.3f} ms/step   distsched {ours_med * 1e3:.3f} ms/step   "
          f"overhead {overhead * 100:+.1f}%  (coupling={args.coupling})")
    print(f"bookkeeping per step: distsched {ours_book * 1e6:.1f} us, Opacus accountant {ref_book * 1e6:.1f} us "
          f"({(ours_book - ref_book) / ref_med * 100:.2f}% of a plain Opacus step)")
    out = Path(args.out)
    if args.coupling:
        out = out.with_name(out.stem + "_coupling.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
