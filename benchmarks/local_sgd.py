"""Local SGD benchmark: DDP vs fixed H vs post-local vs QSR vs AdaComm (+ LR compensation), with
torch's own PeriodicModelAverager at the same H as a reference.

Set-up (issue 3): 2 gloo workers on one machine; sklearn digits, 297 test samples (stratified,
random_state=0), the other 1500 for training, split by label (worker 0: digits 0-4, worker 1:
digits 5-9); MLP 64-256-256-10; global batch 64 (32 per worker), 23 steps per epoch; SGD momentum
0.9; cosine from 0.1 to 0; the same seed (init and data order) for every variant.

Part 1 (main table): every variant once, seed 0, ``--epochs`` epochs.
Part 2 (QSR sweep): DDP; QSR for h_base in {2, 4, 8} with the rule-of-thumb alpha
(``suggest_alpha``) and with the smallest alpha that gives >= 10x fewer rounds than DDP (the
QSR paper's regime, H = h_base until late in training, where that alpha is below the rule of
thumb); fixed H at the rounds of each QSR variant (``H = round(T / rounds)``). Every alpha and H
is computed from the rule and the schedule alone, before any training. Each over ``--seeds``
seeds (init and data order), reported as mean, spread and per-seed gaps paired by seed.
Part 3: interleaved timing of one averaging call, ours vs torch's ``average_parameters``.

    .venv/bin/python benchmarks/local_sgd.py       # full run (writes benchmarks/results/local_sgd.json)
    .venv/bin/python benchmarks/local_sgd.py --epochs 2 --compare-epochs 2 --seeds 1 --json /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from distsched import schedules as S
from distsched.sync import QSR, AdaComm, FixedH, LocalSGD, PostLocal, free_port, init_process_group, suggest_alpha

WORLD = 2
BATCH_PER_WORKER = 32
N_TEST = 297
LR_PEAK = 0.1
H_BASE = 8  # QSR: the smallest power of two whose rule-of-thumb alpha gives >= 10x fewer rounds than DDP


def load_data(rank: int, split: str = "label") -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=N_TEST, random_state=0, stratify=y)
    if split == "label":
        own = (y_tr < 5) if rank == 0 else (y_tr >= 5)
    else:  # iid: a fixed random half each
        own = np.zeros(len(y_tr), dtype=bool)
        own[np.random.default_rng(0).permutation(len(y_tr))[rank::WORLD]] = True
    t = lambda a, dt: torch.tensor(np.asarray(a), dtype=dt)  # noqa: E731
    return {
        "x_own": t(x_tr[own] / 16.0, torch.float32), "y_own": t(y_tr[own], torch.long),
        "x_train": t(x_tr / 16.0, torch.float32), "y_train": t(y_tr, torch.long),
        "x_test": t(x_te / 16.0, torch.float32), "y_test": t(y_te, torch.long),
    }


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    )


def steps_per_epoch() -> int:
    return (1797 - N_TEST) // (WORLD * BATCH_PER_WORKER)  # 1500 // 64 = 23


def variants(total_steps: int, include_pma: bool = True) -> list[dict]:
    """The main table's variants (rules are built fresh per run: they hold state)."""
    alpha = suggest_alpha(LR_PEAK, H_BASE)
    out = [{"name": "DDP (grad all_reduce every step)", "kind": "ddp"}]
    for h in (4, 16, 64):
        out.append({"name": f"fixed H={h}", "kind": "local", "rule": lambda h=h: FixedH(h)})
        if include_pma:
            out.append({"name": f"torch PeriodicModelAverager H={h}", "kind": "pma", "h": h})
    out += [
        {"name": "post-local (H=1, then H=16 from 50%)", "kind": "local",
         "rule": lambda: PostLocal(h=16, switch_step=total_steps // 2)},
        {"name": f"QSR (h_base={H_BASE}, alpha={alpha:.3f})", "kind": "local",
         "rule": lambda: QSR(h_base=H_BASE, alpha=alpha)},
        {"name": "AdaComm (h_0=8)", "kind": "local", "rule": lambda: AdaComm(h_0=8)},
        {"name": "fixed H=64 + LR comp. (h_ref=4, p=0.5)", "kind": "local", "rule": lambda: FixedH(64),
         "comp": (4, 0.5)},
        {"name": f"QSR + LR comp. (h_ref={H_BASE}, p=0.5)", "kind": "local",
         "rule": lambda: QSR(h_base=H_BASE, alpha=alpha), "comp": (H_BASE, 0.5)},
    ]
    return out


def qsr_periods(total_steps: int, h_base: int = H_BASE, alpha: float | None = None) -> list[tuple[int, int]]:
    """(first step, H) of every round QSR takes on the cosine schedule (the rule alone, no training)."""
    alpha = suggest_alpha(LR_PEAK, h_base) if alpha is None else alpha
    sched, rule = S.cosine(lr=LR_PEAK, total_steps=total_steps), QSR(h_base, alpha)
    start, out = 0, []
    while start < total_steps:
        h = rule.next_period(start, sched(start), total_steps=total_steps)
        out.append((start, h))
        start += h
    return out


def qsr_rounds(total_steps: int, h_base: int = H_BASE, alpha: float | None = None) -> int:
    """Rounds QSR takes on the cosine schedule (the rule alone, no training)."""
    return len(qsr_periods(total_steps, h_base, alpha))


def alpha_for_rounds(total_steps: int, h_base: int, max_rounds: int) -> float:
    """The smallest alpha (to 1e-4 relative) for which QSR takes at most ``max_rounds`` rounds:
    rounds fall as alpha grows, so bisect on the rule alone. The paper's regime (H = h_base until
    late in training) is ``alpha < suggest_alpha(lr_peak, h_base)``."""
    lo, hi = 1e-6, 10.0 * LR_PEAK
    assert qsr_rounds(total_steps, h_base, hi) <= max_rounds
    while hi - lo > 1e-4 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if qsr_rounds(total_steps, h_base, mid) <= max_rounds else (mid, hi)
    return hi


def sweep_variants(total_steps: int) -> list[dict]:
    """Part 2's variants, chosen by rule before training: DDP; QSR h_base in {2, 4, 8} with
    ``suggest_alpha``; QSR with the smallest alpha giving >= 10x fewer rounds than DDP (one variant
    per distinct period sequence); fixed H = round(T / rounds) for each QSR variant."""
    qsr: list[dict] = []
    seen: dict[tuple[int, ...], dict] = {}
    target = total_steps // 10  # >= 10x fewer rounds than DDP's one per step
    for regime in ("thumb", "10x"):
        for h_base in (2, 4, 8):
            if regime == "thumb":
                alpha = suggest_alpha(LR_PEAK, h_base)
            else:
                alpha = alpha_for_rounds(total_steps, h_base, target)
            periods = qsr_periods(total_steps, h_base, alpha)
            key = tuple(h for _, h in periods)
            if key in seen:  # same periods as a variant already listed (h_base inactive): not run twice
                seen[key]["same_periods_h_base"].append(h_base)
                continue
            grows = next((s for s, h in periods if h > h_base), total_steps)
            seen[key] = {"kind": "local", "rule": lambda h_base=h_base, alpha=alpha: QSR(h_base=h_base, alpha=alpha),
                         "h_base": h_base, "alpha": alpha, "regime": regime, "rule_rounds": len(periods),
                         "h_at_peak": periods[0][1], "grows_from_step": grows, "same_periods_h_base": [h_base]}
            qsr.append(seen[key])
    for q in qsr:
        hb = "|".join(map(str, q["same_periods_h_base"]))
        q["name"] = f"QSR h_base={hb} alpha={q['alpha']:.4f} ({q['regime']})"
    fixed = sorted({max(1, round(total_steps / q["rule_rounds"])) for q in qsr})
    out = [{"name": "DDP", "kind": "ddp"}] + qsr
    out += [{"name": f"fixed H={h}", "kind": "local", "rule": lambda h=h: FixedH(h), "h": h} for h in fixed]
    for q in qsr:
        q["matched_fixed"] = f"fixed H={max(1, round(total_steps / q['rule_rounds']))}"
    return out


_META = ("h_base", "alpha", "regime", "rule_rounds", "h_at_peak", "grows_from_step", "matched_fixed", "h",
         "same_periods_h_base")


def run_variant(v: dict, seed: int, epochs: int, data: dict, rank: int) -> dict:
    from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
    from torch.distributed.algorithms.model_averaging.utils import average_parameters

    total = steps_per_epoch() * epochs
    sched = S.cosine(lr=LR_PEAK, total_steps=total)
    model = mlp(seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=LR_PEAK, momentum=0.9)
    net, engine, pma = model, None, None
    if v["kind"] == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
    elif v["kind"] == "pma":
        pma = PeriodicModelAverager(period=v["h"], warmup_steps=v["h"] - 1)  # syncs after steps H-1, 2H-1, ...
    else:
        engine = LocalSGD(model, v["rule"](), sched, total_steps=total, lr_compensation=v.get("comp"))
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    n_own, per_epoch = len(data["y_own"]), steps_per_epoch() * BATCH_PER_WORKER
    assert n_own >= per_epoch
    sync_s, sync_calls, pma_rounds, losses = 0.0, [], 0, []
    dist.barrier()
    wall0 = time.perf_counter()
    for t in range(total):
        if t % steps_per_epoch() == 0:
            perm = torch.randperm(n_own, generator=gen)[:per_epoch]
        idx = perm[(t % steps_per_epoch()) * BATCH_PER_WORKER:][:BATCH_PER_WORKER]
        lr = sched(t) * (engine.lr_factor(t) if engine is not None else 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(data["x_own"][idx]), data["y_own"][idx])
        loss.backward()
        opt.step()
        loss_value = loss.item()
        losses.append(loss_value)
        # wait for the peer outside the timer on sync steps (same for ours and torch's), so that
        # "time in averaging" is the averaging itself, not a straggler's compute
        pma_due = pma is not None and pma.step >= pma.warmup_steps and (pma.step - pma.warmup_steps) % pma.period == 0
        due = (engine is not None and t == engine.next_sync_step) or pma_due or (pma is not None and t == total - 1)
        if due:
            dist.barrier()
        t0 = time.perf_counter()
        if engine is not None:
            engine.step(t, loss_value)
        elif pma is not None:
            pma_rounds += int(pma_due)
            pma.average_parameters(model.parameters())
            if t == total - 1 and total % v["h"] != 0:  # the final sync ours always does
                average_parameters(iter(model.parameters()), None)
                pma_rounds += 1
        dt = time.perf_counter() - t0
        sync_s += dt
        if due:
            sync_calls.append(dt)
    wall = time.perf_counter() - wall0
    if engine is not None:
        engine.finalize()
    with torch.no_grad():
        model.eval()
        acc = float((model(data["x_test"]).argmax(1) == data["y_test"]).float().mean())
        train_loss = float(F.cross_entropy(model(data["x_train"]), data["y_train"]))
        flat = torch.nn.utils.parameters_to_vector(model.parameters())
        other = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(other, flat)
        spread = float(max((o - flat).abs().max() for o in other))
    if v["kind"] == "ddp":
        rounds, bytes_sent = total, total * 4 * n_params
    elif v["kind"] == "pma":
        rounds, bytes_sent = pma_rounds, pma_rounds * 4 * n_params
    else:
        rounds, bytes_sent = engine.rounds, engine.bytes_sent
    return {"name": v["name"], "kind": v["kind"], "seed": seed, "epochs": epochs, "steps": total,
            "rounds": rounds, "bytes": bytes_sent, "wall_s": wall,
            "sync_s": None if v["kind"] == "ddp" else sync_s,
            "sync_median_us": 1e6 * statistics.median(sync_calls) if sync_calls else None,
            "test_acc": acc, "train_loss": train_loss,
            "rank_spread": spread, "last_local_loss": float(np.mean(losses[-steps_per_epoch():]))}


def interleaved_timing(calls: int) -> dict:
    """One averaging call, ours (``LocalSGD.sync``) vs torch's ``average_parameters``, alternating
    order each call, on two copies of the benchmark MLP."""
    from torch.distributed.algorithms.model_averaging.utils import average_parameters

    ours_model, torch_model = mlp(0), mlp(0)
    engine = LocalSGD(ours_model, FixedH(1))
    ours, theirs = [], []
    for i in range(calls + 20):
        order = ("ours", "torch") if i % 2 == 0 else ("torch", "ours")
        for who in order:
            dist.barrier()
            t0 = time.perf_counter()
            if who == "ours":
                engine.sync()
            else:
                average_parameters(iter(torch_model.parameters()), None)
            dt = time.perf_counter() - t0
            if i >= 20:  # warm-up calls dropped
                (ours if who == "ours" else theirs).append(dt)
    return {"calls": calls, "ours_median_us": 1e6 * statistics.median(ours),
            "torch_median_us": 1e6 * statistics.median(theirs),
            "ratio_median": statistics.median(ours) / statistics.median(theirs)}


def worker(rank: int, port: int, args: argparse.Namespace, out_path: str) -> None:
    torch.set_num_threads(1)
    init_process_group(rank, WORLD, f"tcp://127.0.0.1:{port}", backend="gloo")
    data = load_data(rank, args.split)
    results = {"split": args.split, "main": [], "compare": [], "timing": None}
    total = steps_per_epoch() * args.epochs
    for v in [] if args.compare_only else variants(total):
        r = run_variant(v, 0, args.epochs, data, rank)
        results["main"].append(r)
        if rank == 0:
            print(f"[main] {r['name']}: acc {r['test_acc']:.4f} rounds {r['rounds']} wall {r['wall_s']:.1f}s",
                  flush=True)
    # QSR sweep, DDP and fixed H at QSR's rounds, several seeds (settings from the rule alone)
    sweep = sweep_variants(steps_per_epoch() * args.compare_epochs)
    for seed in range(args.seeds):
        for v in sweep:
            r = run_variant(v, seed, args.compare_epochs, data, rank)
            r.update({k: v[k] for k in _META if k in v})
            results["compare"].append(r)
            if rank == 0:
                print(f"[compare] seed {seed} {r['name']}: acc {r['test_acc']:.4f} loss {r['train_loss']:.4f} "
                      f"rounds {r['rounds']}", flush=True)
    if not args.compare_only:
        results["timing"] = interleaved_timing(args.timing_calls)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


def _mb(b: int) -> str:
    return f"{b / 2**20:.1f}"


def _report_main(res: dict) -> list[str]:
    main = res["main"]
    ddp = next(r for r in main if r["kind"] == "ddp")
    lines = ["| variant | rounds | MiB sent / worker | wall s | averaging: total s / median us per round "
             "| test acc % | final train loss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in main:
        sync = "-" if r["sync_s"] is None else f"{r['sync_s']:.2f} / {r['sync_median_us']:.0f}"
        lines.append(f"| {r['name']} | {r['rounds']} | {_mb(r['bytes'])} | {r['wall_s']:.1f} | {sync} | "
                     f"{100 * r['test_acc']:.2f} | {r['train_loss']:.4f} |")
    qsr = next(r for r in main if r["name"].startswith("QSR ("))
    lines.append("")
    lines.append(f"QSR vs DDP: accuracy {100 * (qsr['test_acc'] - ddp['test_acc']):+.2f} points, "
                 f"{ddp['rounds'] / qsr['rounds']:.1f}x fewer rounds "
                 f"(target: within 0.5 points, >= 10x fewer).")
    for h in (4, 16, 64):
        ours = next(r for r in main if r["name"] == f"fixed H={h}")
        pma = next(r for r in main if r["name"] == f"torch PeriodicModelAverager H={h}")
        lines.append(f"H={h}: averaging ours/torch, median per round {ours['sync_median_us']:.0f}/"
                     f"{pma['sync_median_us']:.0f} us = {ours['sync_median_us'] / pma['sync_median_us']:.2f}, "
                     f"total {ours['sync_s']:.3f}/{pma['sync_s']:.3f} s = {ours['sync_s'] / pma['sync_s']:.2f} "
                     f"({ours['rounds']} vs {pma['rounds']} rounds)")
    t = res["timing"]
    lines.append(f"Interleaved, {t['calls']} calls each: median {t['ours_median_us']:.0f} us (ours) vs "
                 f"{t['torch_median_us']:.0f} us (torch) per averaging, ratio {t['ratio_median']:.2f} "
                 f"(target <= 1.0).")
    lines.append("")
    return lines


def report(res: dict) -> str:
    lines = [f"split: {res.get('split', 'label')}", ""]
    if res["main"]:
        lines += _report_main(res)
    lines += _report_compare(res["compare"])
    return "\n".join(lines)


def _sd(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _paired_gap(comp: list[dict], name: str, ref: str) -> str:
    """Test-accuracy gap ``name - ref`` in points, paired by seed: mean (sample std) [per seed]."""
    by_seed = {r["seed"]: 100 * r["test_acc"] for r in comp if r["name"] == ref}
    gaps = [100 * r["test_acc"] - by_seed[r["seed"]] for r in comp if r["name"] == name and r["seed"] in by_seed]
    return f"{statistics.mean(gaps):+.2f} ({_sd(gaps):.2f}) [{', '.join(f'{g:+.2f}' for g in gaps)}]"


def _report_compare(comp: list[dict]) -> list[str]:
    names = list(dict.fromkeys(r["name"] for r in comp))
    seeds = sorted({r["seed"] for r in comp})
    lines = [f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {comp[0]['epochs']} epochs; mean (sample std) "
             "[min-max]; gaps in points paired by seed: mean (std) [per seed]; 1 test sample = "
             f"{100 / N_TEST:.2f} points", "",
             "| variant | rounds | MiB / worker | test acc % | final train loss | gap vs DDP | gap vs fixed H at "
             "same rounds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        rs = [r for r in comp if r["name"] == n]
        acc, loss = [100 * r["test_acc"] for r in rs], [r["train_loss"] for r in rs]
        rounds = sorted({r["rounds"] for r in rs})
        vs_ddp = "-" if rs[0]["kind"] == "ddp" else _paired_gap(comp, n, "DDP")
        fixed = rs[0].get("matched_fixed")
        vs_fixed = f"{_paired_gap(comp, n, fixed)} ({fixed})" if fixed else "-"
        lines.append(f"| {n} | {'/'.join(map(str, rounds))} | {_mb(rs[0]['bytes'])} | {statistics.mean(acc):.2f} "
                     f"({_sd(acc):.2f}) [{min(acc):.2f}-{max(acc):.2f}] | {statistics.mean(loss):.4f} "
                     f"({_sd(loss):.4f}) | {vs_ddp} | {vs_fixed} |")
    lines.append("")
    for n in names:
        r = next(r for r in comp if r["name"] == n)
        if "h_base" in r:
            lines.append(f"{n}: {r['rule_rounds']} rounds by the rule, H = {r['h_at_peak']} at the peak LR, "
                         f"H > h_base from step {r['grows_from_step']} of {r['steps']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60, help="epochs of the main table")
    p.add_argument("--compare-epochs", type=int, default=60, help="epochs of the QSR sweep (part 2)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the QSR sweep (part 2)")
    p.add_argument("--split", choices=("label", "iid"), default="label",
                   help="label: worker 0 gets digits 0-4, worker 1 digits 5-9; iid: a random half each")
    p.add_argument("--compare-only", action="store_true", help="only the QSR sweep (part 2)")
    p.add_argument("--timing-calls", type=int, default=300, help="interleaved averaging calls timed")
    default_json = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "local_sgd.json")
    p.add_argument("--json", default=default_json, help="raw results (default: benchmarks/results/local_sgd.json)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = args.json
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    t0 = time.perf_counter()
    mp.spawn(worker, args=(free_port(), args, out), nprocs=WORLD, join=True)
    with open(out) as f:
        res = json.load(f)
    print(f"\n{report(res)}\n\ntotal {time.perf_counter() - t0:.0f} s; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, steps/epoch {steps_per_epoch()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
