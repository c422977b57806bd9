"""DP-SGD step time: distsched's wrapper (``privacy.private_training``: Opacus ``GradSampleModule`` + ``DPOptimizer``
plus distsched's accountant hook, budget guard check and noise scheduler) against plain Opacus
(``PrivacyEngine.make_private``, RDP accountant), same model, same data, same batches.

Workload: scikit-learn digits (1797 x 64, scaled to [0, 1]), MLP 64-128-10, SGD lr 0.1, C = 1, sigma = 1.0,
Poisson batches with q = 0.04 (expected 72 examples) drawn once and fed to both, one torch thread.
Each repeat times a block of ``--steps`` steps of each contender, interleaved (A B B A ...) so that the
machine's load hits both alike, after a warm-up; the figure is the median over blocks of the per-step
time. The bookkeeping is also timed alone. Target: overhead <= 5%.

    .venv/bin/python benchmarks/privacy_step_time.py          # writes benchmarks/results/privacy_step_time.json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=25, help="steps per timed block")
    ap.add_argument("--repeats", type=int, default=151, help="blocks per contender, interleaved")
    ap.add_argument("--coupling", action="store_true", help="also attach the noise-aware LR controller")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "privacy_step_time.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
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
