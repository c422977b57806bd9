"""The simulation loop: sample, train on the executor, aggregate, step the server, evaluate, record.

One round:
1. draw the cohort (fixed or Poisson, availability, dropout) and drop or down-weight stragglers;
2. cut the remaining clients into contiguous chunks (one per executor worker by default) and run each
   chunk on a worker, which returns one float64 sum of weighted (clipped) updates;
3. add the chunk sums in chunk order; the strategy turns them into the round's update (FedAvg mean
   ``sum_k w_k delta_k / sum_k w_k``, or the noisy estimate of the DP wrapper) and steps the global model
   with the server LR of this round;
4. the strategy ends the round (the DP wrapper charges the accountant), evaluate every ``eval_every``
   rounds, write metrics, checkpoint.

With an asynchronous strategy (FedBuff) a round is one server step: clients train on the model version
current at their launch, with simulated latencies, and the server steps on every ``buffer_size``
arrivals (:mod:`distsched.federated.buffered`; the executor trains each version's launches in one call).

The result of a round depends on the seed, the round, the cohort and the chunking, never on which
worker trained a chunk; so the executor (in-process or Ray actors), an actor death (chunk re-run
elsewhere) and a resume change nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distsched.config import load_yaml, to_mapping
from distsched.data import (
    ArrayData,
    PartitionStats,
    bits_per_token,
    build_model,
    flat_params,
    make_partition,
    partition_stats,
    plot_partition,
)
from distsched.federated.buffered import BufferedClients
from distsched.federated.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from distsched.federated.client import LocalWork, evaluate
from distsched.federated.config import FedConfig, fed_config, schedule_of
from distsched.federated.dp import DPFedAvg, sampling_seed
from distsched.federated.executor import Executor, ExecutorFactory, InProcessExecutor, WorkerSetup
from distsched.federated.progress import RoundProgress, write_plots
from distsched.federated.sampling import ClientSampler, Stragglers
from distsched.federated.strategies import DifferentialPrivacy, Strategy, build_strategy
from distsched.federated.worker import ChunkTask, to_csr


@dataclasses.dataclass
class RoundRecord:
    """What one round did (one line of ``metrics.jsonl``)."""

    round: int
    sampled: int
    dropped: int
    late: int
    trained: int
    client_lr: float
    server_lr: float
    local_work: int
    train_loss: float
    round_time_s: float
    elapsed_s: float
    actor_failures: int
    test_acc: float | None = None
    test_loss: float | None = None
    test_bpb: float | None = None
    epsilon: float | None = None
    clip_norm: float | None = None
    unclipped_fraction: float | None = None
    #: simulated time at the end of the round (time units of ``sampling.speed_sigma``: one local step at speed 1)
    sim_time: float | None = None
    #: FedBuff: mean and largest staleness (server steps) of the buffer's updates
    staleness_mean: float | None = None
    staleness_max: int | None = None
    #: keys of this record computed without noise (DP runs; see ``federated.dp.NOT_PRIVATE_METRICS``).
    not_private: list[str] | None = None


class Simulation:
    """A federated simulation run by an executor (see the module docstring).

    ``Simulation(config).run()`` returns the summary (in this process;
    ``run(executor=distsched.cluster.ray_executor())`` on Ray actors); ``run(resume=run_dir)`` continues
    a run folder from its latest checkpoint.
    """

    def __init__(self, config: FedConfig | Mapping[str, Any], *, data: ArrayData | None = None) -> None:
        cfg = self.cfg = fed_config(config)
        self.data = data if data is not None else cfg.data.load(cfg.seed)
        p = cfg.partition
        self.parts = make_partition(
            p.scheme,
            self.data.partition_labels,
            p.num_clients,
            cfg.seed,
            alpha=p.alpha,
            shards_per_client=p.shards_per_client,
            exponent=p.exponent,
            min_size=p.min_size,
            natural=self.data.natural_partition,
        )
        self.num_clients = len(self.parts)
        labels, classes = self.data.partition_labels, self.data.partition_classes
        self.stats: PartitionStats = partition_stats(self.parts, labels, classes)
        self.sizes = self.parts.sizes  # a Partition (CSR): no per-client Python work
        s = cfg.sampling
        self.sampler = ClientSampler(
            self.num_clients, s.cohort_size, s.fraction, s.poisson, s.availability, s.dropout,
            seed=sampling_seed(cfg.seed, cfg.dp.reproducible if cfg.dp else None),
        )
        self.stragglers = Stragglers(
            self.num_clients, s.speed_sigma, s.jitter_sigma, s.deadline, s.late_policy, seed=cfg.seed
        )
        c = cfg.client
        self.local_work = LocalWork(c.local_unit, c.local_work, c.local_work_rule, c.qsr_alpha, c.max_local_work)
        self.client_lr = schedule_of(c.lr, "client.lr")
        self.server_lr = schedule_of(cfg.strategy.server_lr, "strategy.server_lr")
        strategy = build_strategy(cfg.strategy.name, **cfg.strategy.params)
        if cfg.dp is not None:  # DP-FedAvg wraps the configured strategy
            strategy = DifferentialPrivacy.build(
                strategy, **dataclasses.asdict(cfg.dp), sample_rate=self.sampler.sample_rate,
                expected_cohort=self.sampler.expected_cohort, rounds=cfg.rounds, seed=cfg.seed,
            )
        self.strategy: Strategy = strategy
        #: the strategy aggregates per-client updates itself (robust strategies: median, trimmed mean, Krum)
        self.per_client = self.strategy.per_client
        self.buffered: BufferedClients | None = None
        if self.strategy.asynchronous:
            self.buffered = self._buffered_clients()
        self.model_spec = {
            "name": cfg.model.name,
            "input_shape": self.data.input_shape,
            "num_classes": self.data.num_classes,
            "hidden": tuple(cfg.model.hidden),
            "kwargs": dict(cfg.model.kwargs),
        }
        torch.manual_seed(cfg.seed)
        self.model = build_model(**self.model_spec)
        self.params = flat_params(self.model)
        self.x_test = torch.as_tensor(self.data.x_test)
        self.y_test = torch.as_tensor(self.data.y_test)
        self.round = 0
        self.sim_time = 0.0
        self.history: list[RoundRecord] = []

    def _buffered_clients(self) -> BufferedClients:
        """FedBuff's event queue; ValueError (one line) for sampling options that have no meaning without
        synchronous rounds, or a ``max_concurrency`` that differs from the cohort size."""
        s, cfg = self.cfg.sampling, self.cfg
        for key, bad in (("poisson", s.poisson), ("availability", s.availability < 1.0), ("dropout", s.dropout > 0),
                         ("deadline", s.deadline is not None), ("fraction", s.fraction is not None)):
            if bad:
                raise ValueError(f"sampling.{key}: not with strategy.name {cfg.strategy.name!r} (asynchronous: "
                                 "give sampling.cohort_size, the clients in flight, and latencies by speed_sigma, "
                                 "jitter_sigma)")
        concurrency = self.strategy.max_concurrency
        if concurrency is not None and concurrency != s.cohort_size:
            raise ValueError(f"strategy.params.max_concurrency ({concurrency}) must equal sampling.cohort_size "
                             f"({s.cohort_size}): both are the number of clients in flight")
        return BufferedClients(self.num_clients, s.cohort_size, self.strategy.buffer_size, self.stragglers,
                               seed=self.sampler.seed)

    # -- DP (the wrapper's parts, None without a dp block) ------------------------------------
    @property
    def private(self) -> DifferentialPrivacy | None:
        """The DP wrapper around the configured strategy, or None."""
        return self.strategy if isinstance(self.strategy, DifferentialPrivacy) else None

    @property
    def dp(self) -> DPFedAvg | None:
        return self.private.mechanism if self.private is not None else None

    @property
    def accountant(self) -> Any:
        return self.private.accountant if self.private is not None else None

    @property
    def guard(self) -> Any:
        return self.private.guard if self.private is not None else None

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "params": self.params.clone(),
            "strategy": self.strategy.state_dict(),
            "private": self.private is not None,
            "sim_time": self.sim_time,
            "buffered": self.buffered.state_dict() if self.buffered is not None else None,
            "seed": self.cfg.seed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["seed"]) != self.cfg.seed:
            raise ValueError(f"seed must equal the checkpoint's seed {state['seed']}, got {self.cfg.seed}")
        if int(state["round"]) > self.cfg.rounds:
            raise ValueError(f"rounds: the run has completed {int(state['round'])} rounds; resume it with rounds >= "
                             f"{int(state['round'])}, got {self.cfg.rounds}")
        state = _current_layout(state)
        if bool(state["private"]) != (self.private is not None):
            raise ValueError(
                f"dp: the checkpoint was written {'with' if state['private'] else 'without'} DP, the config has "
                f"{'a' if self.private is not None else 'no'} dp block; resume with the run's own config.yaml"
            )
        self.params = state["params"].clone()
        self.strategy.load_state_dict(state["strategy"])
        if self.buffered is not None:
            self.buffered.load_state_dict(state["buffered"])
        self.sim_time = float(state.get("sim_time", 0.0))
        self.round = int(state["round"])

    # -- one round --------------------------------------------------------------------------
    def plan_round(self, r: int) -> tuple[list[ChunkTask], dict[str, Any]]:
        """The chunks to train in round ``r`` (0-based) and the round's bookkeeping."""
        draw = self.sampler.sample(r)
        clients = draw.participants
        lr = float(self.client_lr(r))
        work = self.local_work.amount(lr)
        batch = self.cfg.client.batch_size
        steps = np.array([self.local_work.steps(work, int(self.sizes[k]), batch) for k in clients], dtype=np.int64)
        times = self.stragglers.times(r, clients, steps)
        scale = self.stragglers.weights(times)
        on_time = scale > 0.0
        late = int((scale < 1.0).sum())
        clients, scale = clients[on_time], scale[on_time]
        n_chunks = self.cfg.chunks_per_round or self.num_actors
        opts = self.strategy.client_options(r)  # the DP wrapper adds clip_norm and uniform weighting
        tasks = [
            ChunkTask(
                round=r,
                clients=ids,
                weight_scale=w,
                lr=lr,
                work=work,
                batch_size=batch,
                prox_mu=float(opts.get("prox_mu", 0.0)),
                clip_norm=opts.get("clip_norm"),
                weighting=opts.get("weighting", "samples"),
                per_client=self.per_client,
            )
            for ids, w in zip(np.array_split(clients, n_chunks), np.array_split(scale, n_chunks))
            if len(ids)
        ]
        info = {"sampled": len(draw.sampled), "dropped": len(draw.dropped), "late": late, "lr": lr, "work": work,
                "duration": self._round_duration(times)}
        return tasks, info

    def _round_duration(self, times: np.ndarray) -> float:
        """Simulated length of a synchronous round: the server waits for the slowest client, or until the
        deadline when late updates are dropped and one is late."""
        if len(times) == 0:
            return 0.0
        s = self.stragglers
        if s.deadline is not None and s.policy == "drop" and bool((times > s.deadline).any()):
            return float(s.deadline)
        return float(times.max())

    def combine(self, r: int, results: list[Any]) -> tuple[np.ndarray | None, dict[str, Any]]:
        """Mean update (float64) of the round from the chunk results, in chunk order."""
        total = np.zeros(self.params.numel(), dtype=np.float64)
        weight, unclipped, trained = 0.0, 0, 0
        loss_sum = 0.0
        for res in results:
            total += res.update_sum
            weight += res.weight_sum
            unclipped += res.unclipped
            trained += len(res.clients)
            loss_sum += float(res.losses.sum())
        info: dict[str, Any] = {"trained": trained, "train_loss": loss_sum / trained if trained else float("nan")}
        if self.per_client:  # a robust strategy aggregates the per-client updates itself
            rows = [res.updates for res in results if len(res.clients)]
            return (self.strategy.aggregate(np.concatenate(rows)) if rows else None), info
        delta, extra = self.strategy.aggregate_sum(r, total, weight, unclipped, trained)
        info.update(extra)
        return delta, info

    # -- the loop ---------------------------------------------------------------------------
    def worker_setup(self) -> WorkerSetup:
        """What every executor worker keeps resident (train arrays, client index, model spec...)."""
        order, offsets = to_csr(self.parts)
        return WorkerSetup(
            self.data.x_train, self.data.y_train, order, offsets, self.model_spec, self.local_work, self.cfg.seed
        )

    def run(
        self,
        *,
        out_dir: str | os.PathLike | None = None,
        resume: str | os.PathLike | None = None,
        executor: ExecutorFactory | None = None,
        progress: bool = True,
        stop_after: int | None = None,
        plots: bool = True,
    ) -> dict[str, Any]:
        """Run to ``cfg.rounds`` (or until ``stop_after`` completed rounds, or the privacy budget) on
        ``executor(self.worker_setup(), cfg.num_actors)`` (default :class:`InProcessExecutor`);
        ``plots=False`` skips the PNGs.

        Returns the summary (also written to ``summary.json``).
        """
        from distsched.report import MetricsWriter

        folder = self._open_folder(out_dir, resume)
        if resume is not None and self.round >= self.cfg.rounds and folder.summary_path.is_file():
            return json.loads(folder.summary_path.read_text(encoding="utf-8"))  # finished: keep its results
        metrics = MetricsWriter(folder.metrics_path)
        if resume is not None:
            metrics.truncate_after("round", self.round)
        if plots:
            labels, classes = (self.data.y_train, self.data.num_classes) if self.data.groups is None else (
                np.zeros(len(self.data.partition_labels), dtype=np.int64), 1)  # natural groups: sizes only
            plot_partition(folder.plots / "partition.png", self.parts, labels, classes)
        t_start = time.perf_counter()
        pool = (executor or InProcessExecutor)(self.worker_setup(), self.cfg.num_actors)
        self.pool, self.num_actors = pool, pool.size
        t_ready = time.perf_counter()
        last = self.cfg.rounds if stop_after is None else min(self.cfg.rounds, stop_after)
        bar = RoundProgress(self.cfg.rounds, self.round, enabled=progress)
        try:
            stop_reason = "rounds"
            while self.round < last:
                if not self.strategy.allows_round():
                    stop_reason = "privacy budget"
                    break
                rec = self.run_round(pool, last, t_start)
                metrics.write({k: v for k, v in dataclasses.asdict(rec).items() if v is not None})
                bar.update(rec)
                if self.round % self.cfg.checkpoint_every == 0:
                    save_checkpoint(folder.checkpoints, self.round, self.state_dict())
            if stop_after is None or stop_reason != "rounds":
                save_checkpoint(folder.checkpoints, self.round, self.state_dict())
            worker_rss = pool.max_rss_kib()
        finally:
            bar.close()
            metrics.close()
            pool.close()
        summary = self._summary(stop_reason, t_start, t_ready, time.perf_counter(), worker_rss)
        torch.nn.utils.vector_to_parameters(self.params, self.model.parameters())
        folder.write_model(self.model.state_dict())
        folder.write_summary(summary)
        if plots:
            write_plots(folder)
        return summary

    def _open_folder(self, out_dir: str | os.PathLike | None, resume: str | os.PathLike | None) -> Any:
        """A new run folder (``config.yaml`` written), or ``resume``'s with its latest checkpoint loaded."""
        from distsched.report import RunFolder

        if resume is not None:
            folder = RunFolder.open(resume).claim()  # not two processes continuing one run
            ckpt = latest_checkpoint(folder.checkpoints)
            if ckpt is None:
                raise FileNotFoundError(f"no checkpoint to resume from in {folder.checkpoints}")
            self.load_state_dict(load_checkpoint(ckpt))
            folder.write_config(to_mapping(self.cfg))  # config.yaml says what the run does (rounds, num_actors)
        else:
            folder = RunFolder.create(out_dir or self.cfg.output_dir, self.cfg.name)
            folder.write_config(to_mapping(self.cfg))
        if self.data.manifest is not None:  # which corpus this run read (file list, content hash)
            (folder.root / "corpus.json").write_text(json.dumps(self.data.manifest, indent=1), encoding="utf-8")
        self.folder = folder
        return folder

    def run_round(self, pool: Executor, last: int, t_start: float) -> RoundRecord:
        """Plan round ``self.round``, train it on ``pool``, step the server, account, evaluate; the record."""
        if self.buffered is not None:
            return self._run_buffered_round(pool, last, t_start)
        r = self.round
        t0 = time.perf_counter()
        tasks, plan = self.plan_round(r)
        failures_before = pool.failures
        results = pool.run(tasks, self.params.numpy()) if tasks else []
        delta, info = self.combine(r, results)
        server_lr = float(self.server_lr(r))
        if delta is not None:
            self.params = self.strategy.step(self.params, torch.from_numpy(delta).float(), server_lr)
        ended = self.strategy.end_round()  # the DP wrapper charges the accountant: epsilon, not_private
        self.round = r + 1
        self.sim_time += plan["duration"]
        rec = RoundRecord(
            round=self.round,
            sampled=plan["sampled"],
            dropped=plan["dropped"],
            late=plan["late"],
            trained=info["trained"],
            client_lr=plan["lr"],
            server_lr=server_lr,
            local_work=plan["work"],
            train_loss=info["train_loss"],
            round_time_s=time.perf_counter() - t0,
            elapsed_s=0.0,
            actor_failures=pool.failures - failures_before,
            clip_norm=info.get("clip_norm"),
            unclipped_fraction=info.get("unclipped_fraction"),
            epsilon=ended.get("epsilon"),
            not_private=ended.get("not_private"),
            sim_time=self.sim_time,
        )
        return self._finish_record(rec, last, t_start)

    def _finish_record(self, rec: RoundRecord, last: int, t_start: float) -> RoundRecord:
        """Evaluate when due (every ``eval_every`` rounds, the last round, before the budget stops the run)."""
        if self.round % self.cfg.eval_every == 0 or self.round == last or not self.strategy.allows_round():
            rec.test_acc, rec.test_loss = evaluate(self.model, self.params, self.x_test, self.y_test)
            if self.data.task == "lm":  # next-byte prediction: validation loss in bits per byte
                rec.test_bpb = bits_per_token(rec.test_loss)
        rec.elapsed_s = time.perf_counter() - t_start
        self.history.append(rec)
        return rec

    def _run_buffered_round(self, pool: Executor, last: int, t_start: float) -> RoundRecord:
        """One FedBuff server step: launch and take arrivals until the buffer is full, train the launches on
        the current version (one executor call), aggregate the buffer with staleness weights, step with the
        staleness-scaled server LR (:mod:`distsched.federated.strategies.fedbuff`)."""
        t, q, fedbuff = self.round, self.buffered, self.strategy
        t0 = time.perf_counter()
        lr = float(self.client_lr(t))
        work = self.local_work.amount(lr)
        batch = self.cfg.client.batch_size

        def steps_of(clients: np.ndarray) -> np.ndarray:
            return np.array([self.local_work.steps(work, int(self.sizes[k]), batch) for k in clients], dtype=np.int64)

        arrived = q.fill(t, steps_of)
        clients, waves = q.take_untrained()  # all launched on version t: train them with x_t
        n_chunks = self.cfg.chunks_per_round or self.num_actors
        tasks = [
            ChunkTask(round=t, clients=ids, weight_scale=np.ones(len(ids)), lr=lr, work=work, batch_size=batch,
                      prox_mu=float(fedbuff.client_options(t).get("prox_mu", 0.0)), per_client=True, rounds=w)
            for ids, w in zip(np.array_split(clients, n_chunks), np.array_split(waves, n_chunks)) if len(ids)
        ]
        failures_before = pool.failures
        results = pool.run(tasks, self.params.numpy()) if tasks else []
        for task, res in zip(tasks, results):
            q.store(task.clients, task.rounds, res.updates, res.losses)
        updates, losses = q.collect(arrived)
        ids = np.array([c for c, _, _ in arrived], dtype=np.int64)
        staleness = np.array([t - v for _, _, v in arrived], dtype=np.int64)
        delta = fedbuff.aggregate_buffer(updates, self.sizes[ids], staleness)
        server_lr = float(self.server_lr(t)) * fedbuff.lr_factor(staleness)
        self.params = fedbuff.step(self.params, torch.from_numpy(delta).float(), server_lr)
        self.strategy.end_round()
        self.round = t + 1
        self.sim_time = q.now
        rec = RoundRecord(
            round=self.round, sampled=len(clients), dropped=0, late=0, trained=len(arrived), client_lr=lr,
            server_lr=server_lr, local_work=work, train_loss=float(losses.sum()) / len(losses),
            round_time_s=time.perf_counter() - t0, elapsed_s=0.0, actor_failures=pool.failures - failures_before,
            sim_time=self.sim_time, staleness_mean=float(staleness.mean()), staleness_max=int(staleness.max()),
        )
        return self._finish_record(rec, last, t_start)

    def _summary(self, stop_reason: str, t_start: float, t_ready: float, t_end: float, actor_rss: list[int]) -> dict:
        """The run's ``summary.json``: figures, throughput, memory (``actor_rss``: KiB per worker process)."""
        from distsched.report import read_metrics

        hist = self.history
        whole = read_metrics(self.folder.metrics_path)  # every round of the run, before a resume too
        evals = [r for r in whole if r.get("test_acc") is not None]
        # steady state: rounds after the first of this process, wall clock between round ends
        steady = hist[1:]
        steady_time = hist[-1].elapsed_s - hist[0].elapsed_s if steady else 0.0
        driver_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "rounds": self.round,
            "stop_reason": stop_reason,
            "final_test_acc": evals[-1]["test_acc"] if evals else None,
            "final_test_loss": evals[-1].get("test_loss") if evals else None,
            "final_test_bpb": evals[-1].get("test_bpb") if evals else None,
            "corpus_sha256": self.data.manifest.get("sha256") if self.data.manifest else None,
            **{"epsilon": None, "delta": None, "noise_multiplier": None, "private": None, **self.strategy.summary()},
            "client_updates": int(sum(r.get("trained", 0) for r in whole)),
            "end_to_end_s": t_end - t_start,
            "startup_s": t_ready - t_start,
            "steady_updates_per_s": (sum(h.trained for h in steady) / steady_time) if steady_time > 0 else None,
            "actor_failures": int(sum(r.get("actor_failures", 0) for r in whole)),
            "num_actors": self.num_actors,
            "num_clients": self.num_clients,
            "partition": self.stats.as_dict(),
            "driver_max_rss_mib": driver_mib,
            "actor_max_rss_mib": max(actor_rss) / 1024 if actor_rss else None,
            "peak_rss_mib_upper_bound": driver_mib + sum(actor_rss) / 1024,
            "run_dir": str(self.folder.root),
        }


def simulate(
    config: FedConfig | Mapping[str, Any] | str | os.PathLike | None,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    executor: ExecutorFactory | None = None,
    progress: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Run a federated simulation from a config (object, mapping or YAML path) on ``executor`` (default
    in this process; ``distsched.cluster.ray_executor(address)`` on Ray actors); returns the summary.

    ``overrides`` replace top-level config keys (e.g. ``rounds=5``, ``num_actors=1``). With ``resume``
    the run's own ``config.yaml`` is used (``config`` may be None); a config that differs from it
    outside :data:`distsched.federated.resume.SAFE_KEYS` is refused.
    """
    if isinstance(config, (str, Path, os.PathLike)):
        config = load_yaml(config)
    if isinstance(config, FedConfig):
        config = to_mapping(config)
    if resume is not None:
        from distsched.federated.resume import resume_config
        from distsched.report import RunFolder

        if Path(resume).is_dir():
            RunFolder(resume).claim()  # another process continuing this run: one line, before anything is written
        cfg = resume_config(resume, config, overrides)  # config.yaml rewritten once the checkpoint has loaded
    else:
        cfg = fed_config({**dict(config), **overrides})
    return Simulation(cfg).run(out_dir=out_dir, resume=resume, executor=executor, progress=progress)


def _current_layout(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """A checkpoint in today's layout (``strategy``, ``private``): one written before DP became a wrapper
    strategy held the DP state at the top level (``dp``, ``accountant``, ``guard``)."""
    if "private" in state:
        return state
    private = state.get("dp") is not None
    strategy = ({"inner": state["strategy"], **{k: state.get(k) for k in ("dp", "accountant", "guard")}}
                if private else state["strategy"])
    return {**state, "strategy": strategy, "private": private}
