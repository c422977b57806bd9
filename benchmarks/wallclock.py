"""Time to quality over a constrained link: DDP vs schedule-aware local SGD on the byte-level LM.

Set-up (issue 13.3): 2 hosts of the test-bed (``launch/testbed.sh up 2 --rate R``: two network
namespaces on one bridge, every link shaped with tbf), one worker per host (1 thread), joined by
``torchrun`` across the two namespaces (c10d rendezvous on host 0, gloo on each host's eth0) as the
test-bed tests do. The workload: next-byte prediction on the interpreter's standard library
(``stdlib_text``, context 64), a GPT sized so that one full all_reduce costs more than one training
step at 100 Mbit/s (both times are measured first and reported). Every variant: AdamW inside
(betas 0.9/0.95, weight decay 0.1), warmup + cosine (peak ``LR``, floor ``LR/10``), the same seed, the
same data order and the same token budget (``steps x 2 workers x batch x context``).

Variants, with settings fixed by this rule before any training (``H = 16`` local steps for every
local method; QSR from the same base: ``h_base = 16``, ``alpha = suggest_alpha(LR, 16)`` so that
``H = 16`` at the peak LR and grows as ``(alpha / lr)^2`` when it decays, capped at 128):

* ``ddp``: torch DistributedDataParallel, gradient all_reduce every step (overlapped with backward);
* ``fixed_h``: parameter averaging every H steps; ``qsr``: QSR's H; ``fixed_h_eq``: averaging every
  ``round(steps / R)`` steps, R the rounds QSR takes by its rule alone (no training): fixed H at QSR's
  number of rounds (the comparison of ``benchmarks/local_sgd.py``);
* ``post_local``: H = 1 (parameter averaging) until the LR first decays, then H (Lin et al. 2020);
* ``diloco``: H inner steps, then Nesterov SGD (lr 0.7, momentum 0.9) on the averaged
  pseudo-gradient (Douillard et al. 2023); ``diloco_qsr``: the same with QSR's H;
* ``diloco_stream_int8``: DiLoCo with 4 streaming fragments, int8 exchange (error feedback) and the
  exchange overlapped with 2 local steps (distsched.sync's engine), when ``--stream`` is given.

``--h`` changes the base period H of every local method (QSR's ``h_base`` with it; default 16).

The clock: each worker's training time, excluding evaluation (paused while rank 0 evaluates the
synchronized model on 64 validation windows, after a sync at most every ``--eval-every`` steps, and
at the end; with a delayed exchange, at the first step after ``--eval-every`` steps at which no
exchange is in flight, on rank 0's own model: its fragments were last synced at different steps, as
a Streaming DiLoCo worker's are). Reported: wall-clock to reach DDP's final validation loss (first
evaluation at or below it; "not reached" otherwise, with the best loss), final validation bits per
byte (mean +- sample std [min-max] over seeds), DDP's own time to reach each variant's final loss
divided by that variant's training time (time to quality at the variant's level), sync rounds, bytes
sent per worker, the all_reduce bandwidth achieved on the full model against the shaped rate, and,
when ``diloco`` ran, wall-clock to DiLoCo's final validation loss and the speed-up against DiLoCo's
own training time (issue 14's target); below the table, QSR's final bits per byte against fixed H's
(and the streaming variant's against DiLoCo's), paired by seed.

    sudo .venv/bin/python benchmarks/wallclock.py                     # both rates, 1 seed (needs root)
    sudo .venv/bin/python benchmarks/wallclock.py --rates 100mbit --seeds 0 1 2 --variants ddp diloco_qsr
    sudo .venv/bin/python benchmarks/wallclock.py --tiny --rates 1gbit  # a smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTBED = ROOT / "launch" / "testbed.sh"
VARIANTS = ("ddp", "fixed_h", "qsr", "post_local", "diloco", "diloco_qsr", "fixed_h_eq", "diloco_stream_int8")
H = 16
H_MAX = 128
OUTER = {"lr": 0.7, "momentum": 0.9, "nesterov": True}
FULL = {"layers": 4, "heads": 4, "dim": 192, "context": 64, "batch": 4, "steps": 192, "lr": 2e-3,
        "warmup": 16, "eval_every": 32, "val_windows": 64}
TINY = {"layers": 1, "heads": 2, "dim": 32, "context": 16, "batch": 4, "steps": 24, "lr": 2e-3,
        "warmup": 4, "eval_every": 8, "val_windows": 16}


# ------------------------------------------------------------------------------------------ worker
def _qsr(size: dict[str, Any]) -> Any:
    from distsched.sync import QSR, suggest_alpha

    h = size.get("h", H)
    return QSR(h_base=h, alpha=suggest_alpha(size["lr"], h), h_max=H_MAX, warmup_steps=size["warmup"])


def qsr_rounds(size: dict[str, Any]) -> int:
    """Rounds QSR takes on the run's schedule by its rule alone (no training), as the engine cuts
    them: a round starting at ``t`` lasts ``min(H(t), steps - t)``."""
    rule, schedule, steps = _qsr(size), _schedule(size), size["steps"]
    start, rounds = 0, 0
    while start < steps:
        start += max(1, min(rule.next_period(start, schedule(start), total_steps=steps), steps - start))
        rounds += 1
    return rounds


def _rule(name: str, size: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from distsched.sync import FixedH, OuterSGD, PostLocal

    h, qsr = size.get("h", H), _qsr(size)
    rules = {"fixed_h": FixedH(h), "qsr": qsr, "post_local": PostLocal(h=h), "diloco": FixedH(h),
             "diloco_qsr": qsr, "diloco_stream_int8": FixedH(h),
             "fixed_h_eq": FixedH(max(1, round(size["steps"] / qsr_rounds(size))))}
    options: dict[str, Any] = {}
    if name.startswith("diloco"):
        options["outer_optimizer"] = OuterSGD(**OUTER)
    if name == "diloco_stream_int8":
        options.update(fragments=4, compression="int8", delay=2)
    return rules[name], options


def _schedule(size: dict[str, Any]) -> Any:
    from distsched import schedules as S

    return S.from_spec({"name": "cosine", "lr": size["lr"], "total_steps": size["steps"],
                        "warmup_steps": size["warmup"], "min_lr": size["lr"] / 10})


def _probe(model: Any, x: Any, y: Any, rank: int) -> dict[str, float]:
    """Median time of one training step (forward, backward, AdamW; no communication) and of one
    all_reduce of every parameter as one flat float32 buffer; the bandwidth that implies."""
    import torch
    import torch.distributed as dist

    from distsched.data import token_cross_entropy

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps, reduces = [], []
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    for _ in range(5):
        dist.barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        token_cross_entropy(model(x), y).backward()
        opt.step()
        steps.append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        reduces.append(time.perf_counter() - t0)
    step_s, reduce_s = sorted(steps)[2], sorted(reduces)[2]
    world = dist.get_world_size()
    sent = flat.numel() * 4 * 2 * (world - 1) / world  # ring all_reduce: bytes each worker sends
    return {"step_s": step_s, "allreduce_s": reduce_s, "allreduce_bytes": sent,
            "allreduce_mbit_per_s": sent * 8 / reduce_s / 1e6, "params": flat.numel()}


def run_variant(name: str, seed: int, size: dict[str, Any], data: Any, shard: Any) -> dict[str, Any]:
    """One training run on this worker; rank 0 returns its record (evaluations with their clock)."""
    import torch
    import torch.distributed as dist

    from distsched.data import ShardBatches, evaluate, gpt, token_cross_entropy
    from distsched.sync import LocalSGD

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)
    model = gpt((size["context"],), 256, layers=size["layers"], heads=size["heads"], dim=size["dim"])
    schedule = _schedule(size)
    engine = None
    if name == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        net: Any = DistributedDataParallel(model)
    else:
        net = model
    opt = torch.optim.AdamW(model.parameters(), lr=schedule(0), betas=(0.9, 0.95), weight_decay=0.1)
    if name != "ddp":
        rule, options = _rule(name, size)
        engine = LocalSGD(model, rule=rule, schedule=schedule, optimizer=opt, total_steps=size["steps"], **options)
    batches = iter(ShardBatches(shard, size["batch"], seed, rank))
    numel = sum(p.numel() for p in model.parameters())
    evals: list[dict[str, float]] = []
    clock, last_eval, rounds_seen = 0.0, 0, 0

    def evaluate_now(step: int) -> None:
        if rank == 0:
            out = evaluate(model, data.validation, torch.device("cpu"), batch_size=64)
            evals.append({"step": step, "time_s": clock, "loss": out["test_loss"], "bpb": out["test_bpb"]})
        dist.barrier()

    for t in range(size["steps"]):
        x, y = data.train.arrays(next(batches))
        x, y = torch.from_numpy(x).long(), torch.from_numpy(y).long()
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = schedule(t)
        opt.zero_grad(set_to_none=True)
        loss = token_cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        synced = True
        if engine is not None:
            engine.step(t, float(loss.detach()))
            if engine.delay:  # nothing in flight, so the paused clock hides no communication
                synced = not any(p is not None for p in engine._pending)
            else:
                synced = engine.rounds > rounds_seen
            rounds_seen = engine.rounds
        clock += time.perf_counter() - t0
        done = t + 1
        if done < size["steps"] and synced and done - last_eval >= size["eval_every"]:
            last_eval = done
            evaluate_now(done)
    if engine is not None:
        t0 = time.perf_counter()
        engine.finalize()  # a delayed exchange still in flight lands now
        clock += time.perf_counter() - t0
    evaluate_now(size["steps"])
    if engine is not None:
        rounds, sent = engine.rounds, engine.bytes_sent
    else:
        rounds, sent = size["steps"], size["steps"] * numel * 4 * 2 * (world - 1) // world
    return {"variant": name, "seed": seed, "evals": evals, "rounds": rounds, "bytes_per_worker": int(sent),
            "peak_step_bytes": int(engine.peak_step_bytes if engine is not None else sent // size["steps"]),
            "train_time_s": clock, "final_bpb": evals[-1]["bpb"] if evals else None,
            "final_loss": evals[-1]["loss"] if evals else None}


def worker_main(plan_path: str, out_path: str) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from distsched.data.partitions import iid_shards
    from distsched.data.text import stdlib_windows
    from distsched.sync import init_process_group

    torch.set_num_threads(1)
    plan = json.loads(Path(plan_path).read_text())
    size = plan["size"]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    init_process_group(rank, world, "env://", timeout_s=900)
    try:
        data = stdlib_windows(size["context"], val_windows=size["val_windows"], cache_dir=plan["cache_dir"])
        torch.manual_seed(0)
        from distsched.data import gpt

        model = gpt((size["context"],), 256, layers=size["layers"], heads=size["heads"], dim=size["dim"])
        x, y = data.train.arrays(np.arange(size["batch"]))
        probe = _probe(model, torch.from_numpy(x).long(), torch.from_numpy(y).long(), rank)
        out = open(out_path, "a", encoding="utf-8") if rank == 0 else None
        if out is not None:
            out.write(json.dumps({"probe": probe, "rate": plan["rate"]}) + "\n")
            out.flush()
        for seed, name in plan["runs"]:
            shard = iid_shards(len(data.train), world, seed)[rank]
            rec = run_variant(name, seed, size, data, shard)
            if out is not None:
                out.write(json.dumps({**rec, "rate": plan["rate"]}) + "\n")
                out.flush()
                print(f"[{plan['rate']}] {name} seed {seed}: {rec['train_time_s']:.1f} s, "
                      f"bpb {rec['final_bpb']:.3f}, rounds {rec['rounds']}", flush=True)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ driver
def _testbed(prefix: str, *args: str) -> None:
    env = {**os.environ, "TESTBED_PREFIX": prefix}
    proc = subprocess.run([str(TESTBED), *args], capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"testbed.sh {' '.join(args)}: {proc.stderr.strip()}")


def _launch(prefix: str, plan_path: Path, out_path: Path, port: int, timeout_s: float) -> None:
    """torchrun on host 0 and host 1 (one process each), c10d rendezvous on host 0."""
    procs = []
    for i in range(2):
        argv = ["ip", "netns", "exec", f"{prefix}h{i}", sys.executable, "-m", "torch.distributed.run",
                "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=198.18.0.1:{port}",
                f"--rdzv-id=wallclock{port}", f"--local-addr=198.18.0.{i + 1}", f"--rdzv-conf=is_host={int(i == 0)}",
                str(Path(__file__).resolve()), "--worker", str(plan_path), str(out_path)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "eth0",
               "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        procs.append(subprocess.Popen(argv, env=env, stdout=None if i == 0 else subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT if i == 0 else subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout_s
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [p for p in procs if p.returncode != 0]
    if bad:
        err = bad[0].stderr.read()[-2000:] if bad[0].stderr else ""
        raise RuntimeError(f"a worker failed ({bad[0].returncode}): {err}")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split(" ")[:3])


def time_to_target(evals: list[dict[str, float]], target: float) -> float | None:
    """Clock of the first evaluation whose loss is <= ``target`` (None if none is)."""
    for e in evals:
        if e["loss"] <= target + 1e-12:
            return e["time_s"]
    return None


def _mean_sd(xs: list[float], fmt: str, spread: bool = True) -> str:
    """``mean`` for one value; ``mean +- sample std [min-max]`` for several (no range: ``spread=False``)."""
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return format(mean, fmt)
    sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5
    text = f"{mean:{fmt}} +- {sd:{fmt.lstrip('+')}}"
    return f"{text} [{min(xs):{fmt}}-{max(xs):{fmt}}]" if spread else text


def _to_reference(mine: list[dict[str, Any]], ref: dict[int, dict[str, Any]]) -> tuple[str, str]:
    """Time to the reference's final loss (mean over seeds, or how many seeds reached it) and the
    speed-up ``reference train time / that time``, paired by seed."""
    hits, speed = [], []
    for r in mine:
        other = ref.get(r["seed"])
        if other is None:
            continue
        hit = time_to_target(r["evals"], other["final_loss"])
        hits.append(hit)
        if hit is not None:
            speed.append(other["train_time_s"] / hit)
    reached = [h for h in hits if h is not None]
    hit_txt = (f"{sum(reached) / len(reached):.1f}" if len(reached) == len(hits) and hits else
               f"reached in {len(reached)}/{len(hits)} seeds" if hits else "n/a")
    sp_txt = (f"{sum(speed) / len(speed):.2f}x" + (f" ({min(speed):.2f}-{max(speed):.2f})" if len(speed) > 1
              else "")) if speed else "-"
    return hit_txt, sp_txt


def paired_gaps(records: list[dict[str, Any]], name: str, ref: str) -> str | None:
    """Final bits per byte of ``name`` minus ``ref``'s, paired by seed and rate: mean +- std [each]."""
    gaps = []
    for r in records:
        if r["variant"] != name:
            continue
        other = [o for o in records if o["variant"] == ref and o["seed"] == r["seed"] and o["rate"] == r["rate"]]
        if other:
            gaps.append(r["final_bpb"] - other[0]["final_bpb"])
    if not gaps:
        return None
    return f"{_mean_sd(gaps, '+.3f', spread=False)} [{', '.join(f'{g:+.3f}' for g in gaps)}]"


def table(records: list[dict[str, Any]], probes: dict[str, dict[str, float]]) -> str:
    """The markdown table: per rate and variant, mean over seeds (each seed's DDP sets its target;
    with ``diloco`` in the run, each seed's DiLoCo sets a second one)."""
    lines = []
    for rate, probe in probes.items():
        shaped = float(rate.replace("mbit", "e6").replace("gbit", "e9"))
        lines.append(f"\n**{rate}**: {probe['params'] / 1e6:.2f}M parameters; one training step "
                     f"{probe['step_s'] * 1e3:.0f} ms, one full all_reduce {probe['allreduce_s'] * 1e3:.0f} ms "
                     f"({probe['allreduce_s'] / probe['step_s']:.1f} steps); all_reduce bandwidth achieved "
                     f"{probe['allreduce_mbit_per_s']:.0f} Mbit/s of {shaped / 1e6:.0f} shaped "
                     f"({probe['allreduce_mbit_per_s'] * 1e6 / shaped:.0%})\n")
        lines.append("| variant | seeds | time to DDP's final loss (s) | speed-up vs DDP | train time (s) | "
                     "final val bits/byte | best val bits/byte | DDP's time to this final loss / train time | "
                     "rounds | MB sent / worker |")
        rows = [r for r in records if r["rate"] == rate]
        ddp = {r["seed"]: r for r in rows if r["variant"] == "ddp"}
        diloco = {r["seed"]: r for r in rows if r["variant"] == "diloco"}
        if diloco:
            lines[-1] += " time to DiLoCo's final loss (s) | speed-up vs DiLoCo |"
        lines.append("|---" * (12 if diloco else 10) + "|")
        for name in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == name]
            reverse = []
            for r in mine:
                ref = ddp.get(r["seed"])
                if ref is not None:
                    back = time_to_target(ref["evals"], r["final_loss"])  # DDP at this variant's final quality
                    reverse.append(f"{back / r['train_time_s']:.2f}x" if back is not None else "DDP never as low")
            hit_txt, sp_txt = _to_reference(mine, ddp)
            mean = {k: sum(r[k] for r in mine) / len(mine) for k in ("rounds", "bytes_per_worker")}
            best = sum(min(e["bpb"] for e in r["evals"]) for r in mine) / len(mine)
            line = (f"| {name} | {len(mine)} | {hit_txt} | {sp_txt} | "
                    f"{_mean_sd([r['train_time_s'] for r in mine], '.1f')} | "
                    f"{_mean_sd([r['final_bpb'] for r in mine], '.3f')} | {best:.3f} | {', '.join(reverse) or '-'} | "
                    f"{mean['rounds']:.0f} | {mean['bytes_per_worker'] / 1e6:.1f} |")
            if diloco:
                line += " {} | {} |".format(*_to_reference(mine, diloco))
            lines.append(line)
        for name, ref in (("qsr", "fixed_h_eq"), ("qsr", "fixed_h"), ("diloco_stream_int8", "diloco")):
            gap = paired_gaps(rows, name, ref)
            if gap is not None:
                lines.append(f"\n{name} - {ref}, final bits per byte paired by seed: {gap}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", nargs="+", default=["100mbit", "1gbit"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--headline-seeds", nargs="*", type=int, default=[],
                        help="more seeds for the headline rows (ddp and diloco_qsr) at the first rate")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS[:-1]), choices=VARIANTS)
    parser.add_argument("--stream", action="store_true", help="add diloco_stream_int8")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--skip-ddp", action="store_true",
                        help="no DDP runs (no time-to-DDP columns): e.g. DiLoCo against its streaming variant")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps of every variant (default {FULL['steps']}; tiny {TINY['steps']}); "
                             "the warmup, the evaluation interval and the cosine's floor stay, the cosine spans them")
    parser.add_argument("--h", type=int, default=H, help=f"base period H of every local method (default {H})")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "wallclock.json"))
    parser.add_argument("--timeout", type=float, default=3600.0, help="per rate, seconds")
    parser.add_argument("--worker", nargs=2, metavar=("PLAN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(*args.worker)
        return 0
    if os.geteuid() != 0:
        print("wallclock.py: needs root to make the test-bed's network namespaces (launch/testbed.sh)",
              file=sys.stderr)
        return 2
    if args.h < 1:
        print(f"wallclock.py: --h must be >= 1, got {args.h}", file=sys.stderr)
        return 2
    base = TINY if args.tiny else FULL
    if args.steps is not None and args.steps < base["warmup"] + base["eval_every"]:
        print(f"wallclock.py: --steps must be >= warmup + eval_every = {base['warmup'] + base['eval_every']}, "
              f"got {args.steps}", file=sys.stderr)
        return 2
    variants = [*args.variants, *(["diloco_stream_int8"] if args.stream else [])]
    if args.skip_ddp:
        variants = [v for v in variants if v != "ddp"]
    elif "ddp" not in variants:
        variants.insert(0, "ddp")
    size = {**base, "h": args.h, **({} if args.steps is None else {"steps": args.steps})}
    prefix = f"wc{os.getpid() % 100000}"
    work = Path(tempfile.mkdtemp(prefix="wallclock-"))
    from distsched.data.text import stdlib_windows

    stdlib_windows(size["context"], cache_dir=work / "cache")  # build the corpus cache once, here
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = _load()
    records, probes = [], {}
    try:
        for k, rate in enumerate(args.rates):
            _testbed(prefix, "up", "2", "--rate", rate)
            runs = [(seed, name) for seed in args.seeds for name in variants]
            if k == 0:  # the headline rows get more seeds at the first (slowest) rate
                runs += [(seed, name) for seed in args.headline_seeds for name in ("ddp", "diloco_qsr")
                         if seed not in args.seeds and name in variants]
            plan = {"size": size, "runs": runs, "rate": rate, "cache_dir": str(work / "cache")}
            plan_path, out_path = work / f"plan_{rate}.json", work / f"out_{rate}.jsonl"
            plan_path.write_text(json.dumps(plan))
            try:
                _launch(prefix, plan_path, out_path, 29600 + k, args.timeout)
            finally:  # the runs that finished are kept (and reported) even if a later one failed
                lines = out_path.read_text().splitlines() if out_path.exists() else []
                for line in lines:
                    rec = json.loads(line)
                    if "probe" in rec:
                        probes[rate] = rec["probe"]
                    else:
                        records.append(rec)
                _save(args.json, f"partial ({len(records)} runs so far)", size, probes, records)
    finally:
        _testbed(prefix, "down")
        shutil.rmtree(work, ignore_errors=True)  # the corpus cache and the workers' raw outputs
    load_after = _load()
    text = table(records, probes)
    header = (f"wallclock.py {'(tiny) ' if args.tiny else ''}{started}; size {size}; seeds {args.seeds}"
              f" (headline rows at {args.rates[0]}: + {args.headline_seeds}); "
              f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(header)
    print(text)
    _save(args.json, header, size, probes, records, text)
    print(f"\nresults: {args.json}")
    return 0


def _save(path: str, header: str, size: dict[str, Any], probes: dict[str, Any], records: list[dict[str, Any]],
          text: str = "") -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "size": size, "probes": probes, "records": records,
                               "table": text}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
