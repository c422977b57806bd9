"""Planner time and tightness: distsched's ``privacy.plan`` against Opacus' ``get_noise_multiplier`` on the same
targets, RDP and PRV, in one run.

For each target (epsilon, delta, q, steps) both solve for the noise multiplier; we time each (median of
``--repeats`` runs for RDP, one run for PRV) and check the answer with Opacus' accountant: epsilon reached
(must be <= target) and the gap ``target - epsilon`` (smaller is tighter; a smaller noise multiplier at the
same budget means less noise in training).

    .venv/bin/python benchmarks/privacy_planner.py            # writes benchmarks/results/privacy_planner.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from functools import partial
from pathlib import Path

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from distsched.privacy import plan

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {
    "rdp": [  # (target_epsilon, delta, sample_rate, steps)
        (8.0, 1e-5, 0.04, 2250),
        (3.0, 1e-5, 0.01, 5000),
        (1.0, 1e-5, 0.004, 10000),
        (0.5, 1e-6, 0.1, 100),
        (10.0, 1e-5, 0.256, 3000),
    ],
    "prv": [
        (8.0, 1e-5, 0.04, 2250),
        (3.0, 1e-5, 0.01, 1000),
        (1.0, 1e-5, 0.02, 500),
    ],
}


def _check(mech: str, sigma: float, q: float, steps: int, delta: float) -> float:
    acc = RDPAccountant() if mech == "rdp" else PRVAccountant()
    acc.history = [(sigma, q, steps)]
    return float(acc.get_epsilon(delta=delta))


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for RDP (PRV: 1)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "privacy_planner.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    rows = []
    for mech, targets in TARGETS.items():
        reps = args.repeats if mech == "rdp" else 1
        for eps_t, delta, q, steps in targets:
            t_ours, p = _timed(partial(plan, target_epsilon=eps_t, delta=delta, sample_rate=q, steps=steps,
                                       accountant=mech), reps)
            t_op, s_op = _timed(partial(get_noise_multiplier, target_epsilon=eps_t, target_delta=delta,
                                        sample_rate=q, steps=steps, accountant=mech), reps)
            e_ours = _check(mech, p.noise_multiplier, q, steps, delta)
            e_op = _check(mech, s_op, q, steps, delta)
            row = {
                "accountant": mech, "target_epsilon": eps_t, "delta": delta, "sample_rate": q, "steps": steps,
                "distsched_sigma": p.noise_multiplier, "distsched_epsilon": e_ours, "distsched_gap": eps_t - e_ours,
                "distsched_time_s": t_ours, "distsched_evaluations": p.evaluations,
                "opacus_sigma": s_op, "opacus_epsilon": e_op, "opacus_gap": eps_t - e_op, "opacus_time_s": t_op,
            }
            rows.append(row)
            print(f"{mech} eps={eps_t:<5g} q={q:<6g} T={steps:<6d} | distsched sigma={p.noise_multiplier:.6f} "
                  f"gap={eps_t - e_ours:.2e} {t_ours:.3f}s ({p.evaluations} evals) | opacus sigma={s_op:.6f} "
                  f"gap={eps_t - e_op:.2e} {t_op:.3f}s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                         indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
