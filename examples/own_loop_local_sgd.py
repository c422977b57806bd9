"""Local SGD inside your own training loop: two gloo workers on this machine, QSR choosing when to
average from the cosine LR.

    .venv/bin/python examples/own_loop_local_sgd.py [--steps 400]

The only additions to a plain single-worker loop are marked with ``# <-``.
"""

from __future__ import annotations

import argparse

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from distsched import schedules as S
from distsched.sync import QSR, LocalSGD, free_port, init_process_group, suggest_alpha


def train(rank: int, world: int, port: int, steps: int) -> dict:
    torch.set_num_threads(1)
    init_process_group(rank, world, f"tcp://127.0.0.1:{port}")  # <- gloo here, NCCL on GPUs

    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    x_mine, y_mine = x[rank::world], y[rank::world]  # each worker its own shard

    torch.manual_seed(rank)  # different inits: the engine broadcasts rank 0's model
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = S.cosine(lr=0.1, total_steps=steps)
    engine = LocalSGD(  # <-
        model, rule=QSR(h_base=4, alpha=suggest_alpha(0.1, 4)), schedule=sched, total_steps=steps
    )

    gen = torch.Generator().manual_seed(rank)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = sched(step)
        idx = torch.randint(0, len(y_mine), (32,), generator=gen)
        loss = F.cross_entropy(model(x_mine[idx]), y_mine[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if engine.step(step, loss.item()) and rank == 0 and step < steps - 1:  # <- averages when QSR says so
            print(f"step {step:4d}  lr {sched(step):.4f}  synced; next H = {engine.current_period}")
    engine.finalize()  # <- a no-op here: the last step always syncs

    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    if rank == 0:
        print(f"{engine.rounds} rounds instead of {steps}, {engine.bytes_sent / 2**20:.1f} MiB sent per worker, "
              f"accuracy on all digits {acc:.3f}")
    torch.distributed.destroy_process_group()
    return {"rounds": engine.rounds, "bytes_sent": engine.bytes_sent, "accuracy": acc}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    mp.spawn(train, args=(2, free_port(), args.steps), nprocs=2, join=True)
