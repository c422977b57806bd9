"""Sync engine benchmark: bytes per worker, peak bytes per step and final validation loss of DiLoCo
with streaming fragments (F in {1, 4}) and compressed exchange (fp32, bf16, int8 + error feedback;
and the codec chosen from the LR), against plain DiLoCo (F = 1, fp32) at equal steps. Issue 14,
items 1-3.

Set-up: 2 gloo workers on loopback; sklearn digits, 297 test samples (stratified, random_state=0),
the other 1500 for training, an i.i.d. half per worker (``--split label``: digits 0-4 / 5-9); MLP
64-128x5-10 (6 Linear modules, so F = 4 has modules to balance); 32 samples per worker per step;
inner AdamW (weight decay 0.01) on a cosine from ``--lr`` to 0 and DiLoCo's outer Nesterov SGD
(lr 0.7, momentum 0.9) every ``--h`` steps, as in the DiLoCo paper (with inner SGD + momentum 0.9
at lr 0.1 plain DiLoCo diverged here); the same seeds (init, data order) for every variant. Bytes are what each
worker hands to the collectives (the engine's ``bytes_sent``); "peak/step" is the most bytes sent at
one step before the last (the last step syncs every fragment at once, i.e. the whole model).
The validation loss is the cross-entropy of the final (identical) model on the 297 test samples,
mean over ``--seeds`` seeds.

    .venv/bin/python benchmarks/sync_engine.py                 # the BENCHMARKS.md table
    .venv/bin/python benchmarks/sync_engine.py --steps 60 --seeds 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from distsched import schedules as S
from distsched.sync import FixedH, LocalSGD, LRCompression, OuterSGD, free_port, init_process_group

WORLD = 2
BATCH_PER_WORKER = 32
N_TEST = 297

VARIANTS = [  # (name, fragments, compression, delay)
    ("plain DiLoCo (F=1, fp32)", 1, "none", 0),
    ("F=1 bf16+EF", 1, "bf16", 0),
    ("F=1 int8+EF", 1, "int8", 0),
    ("F=4 fp32", 4, "none", 0),
    ("F=4 bf16+EF", 4, "bf16", 0),
    ("F=4 int8+EF", 4, "int8", 0),
    ("F=4 int8+EF, delay 2", 4, "int8", 2),
    ("F=4 LR: bf16 -> int8, +EF", 4, "lr", 0),
]


def load_data(rank: int, split: str) -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=N_TEST, random_state=0, stratify=y)
    if split == "label":
        own = (y_tr < 5) if rank == 0 else (y_tr >= 5)
    else:
        own = np.zeros(len(y_tr), dtype=bool)
        own[np.random.default_rng(0).permutation(len(y_tr))[rank::WORLD]] = True
    t = lambda a, dt: torch.tensor(np.asarray(a), dtype=dt)  # noqa: E731
    return {"x": t(x_tr[own] / 16.0, torch.float32), "y": t(y_tr[own], torch.long),
            "x_test": t(x_te / 16.0, torch.float32), "y_test": t(y_te, torch.long)}


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = [torch.nn.Linear(64, 128), torch.nn.ReLU()]
    for _ in range(4):
        layers += [torch.nn.Linear(128, 128), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(128, 10))
    return torch.nn.Sequential(*layers)


def run_variant(rank: int, data: dict, args, fragments: int, compression: str, delay: int, seed: int) -> dict:
    model = mlp(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = S.cosine(lr=args.lr, total_steps=args.steps)
    if compression == "lr":  # bf16 while lr >= lr_peak / 2, int8 below
        compression = LRCompression(lr_peak=args.lr)
    eng = LocalSGD(model, FixedH(args.h), sched, total_steps=args.steps, fragments=fragments,
                   compression=compression, delay=delay, outer_optimizer=OuterSGD(lr=0.7, momentum=0.9))
    gen = torch.Generator().manual_seed(1000 * seed + rank)
    n = len(data["y"])
    step_bytes = []
    for t in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = sched(t)
        idx = torch.randint(0, n, (BATCH_PER_WORKER,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(data["x"][idx]), data["y"][idx]).backward()
        opt.step()
        before = eng.bytes_sent
        eng.step(t)
        step_bytes.append(eng.bytes_sent - before)
    with torch.no_grad():
        logits = model(data["x_test"])
        val_loss = float(F.cross_entropy(logits, data["y_test"]))
        acc = float((logits.argmax(1) == data["y_test"]).float().mean())
    digest = float(sum(p.detach().double().sum() for p in model.parameters()))
    return {"bytes": eng.bytes_sent, "peak_before_last": max(step_bytes[:-1]), "last_step": step_bytes[-1],
            "val_loss": val_loss, "acc": acc, "digest": digest, "fragment_syncs": eng.fragment_syncs,
            "n_params": sum(p.numel() for p in model.parameters())}


def _worker(rank: int, port: int, args, out: str) -> None:
    torch.set_num_threads(1)
    init_process_group(rank, WORLD, f"tcp://127.0.0.1:{port}", backend="gloo")
    data = load_data(rank, args.split)
    res = {}
    try:
        for name, frags, comp, delay in VARIANTS:
            res[name] = [run_variant(rank, data, args, frags, comp, delay, seed) for seed in range(args.seeds)]
    finally:
        dist.destroy_process_group()
    torch.save(res, os.path.join(out, f"rank{rank}.pt"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=480, help="steps per run (default 480 = ~20 epochs)")
    ap.add_argument("--h", type=int, default=16, help="DiLoCo period H (default 16)")
    ap.add_argument("--lr", type=float, default=1e-3, help="inner AdamW peak LR (default 1e-3)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per variant (default 3)")
    ap.add_argument("--split", choices=("iid", "label"), default="iid")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(free_port(), args, out), nprocs=WORLD, join=True)
        ranks = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]
    for name in ranks[0]:  # both workers hold the same final model
        same = [a["digest"] == b["digest"] for a, b in zip(ranks[0][name], ranks[1][name])]
        assert all(same), f"{name}: the workers' final models differ (or are NaN)"
    res = ranks[0]
    base = res[VARIANTS[0][0]]
    base_bytes, base_loss = base[0]["bytes"], statistics.mean(r["val_loss"] for r in base)
    print(f"digits, {WORLD} gloo workers, {args.steps} steps, H={args.h}, split={args.split}, "
          f"{base[0]['n_params']} parameters, {args.seeds} seeds")
    head = (f"{'variant':26s} {'bytes/worker':>12s} {'x plain':>8s} {'peak/step':>10s} {'x plain':>8s} "
            f"{'last step':>10s} {'val loss':>9s} {'vs plain':>9s} {'acc':>6s}")
    print(head)
    rows = []
    for name, *_ in VARIANTS:
        r = res[name]
        loss = statistics.mean(x["val_loss"] for x in r)
        spread = (max(x["val_loss"] for x in r) - min(x["val_loss"] for x in r)) / 2
        row = {"variant": name, "bytes": r[0]["bytes"], "bytes_ratio": r[0]["bytes"] / base_bytes,
               "peak_before_last": r[0]["peak_before_last"],
               "peak_ratio": r[0]["peak_before_last"] / base[0]["peak_before_last"],
               "last_step": r[0]["last_step"], "val_loss": loss, "val_loss_spread": spread,
               "loss_vs_plain": loss / base_loss - 1, "acc": statistics.mean(x["acc"] for x in r),
               "per_seed_loss": [x["val_loss"] for x in r]}
        rows.append(row)
        print(f"{name:26s} {row['bytes']:12d} {row['bytes_ratio']:8.3f} {row['peak_before_last']:10d} "
              f"{row['peak_ratio']:8.3f} {row['last_step']:10d} {loss:9.4f} {100 * row['loss_vs_plain']:+8.2f}% "
              f"{row['acc']:6.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
